"""One writer at a time: flocks held for a whole run.

``domain_lock``: one backup of a domain at a time (by UUID), so two runs into
different directories are refused too. ``directory_lock``: one command that
changes a backup set (backup, consolidate, prune, verify --add-sums) or
writes a restore target at a time (by the directory's real path). Both live
in /run/lock and hold the holder's pid; the kernel drops a lock when its
process dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from vbbackup.errors import BackupBusyError, VbError

LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")


@contextlib.contextmanager
def domain_lock(domain: str, uuid: str) -> Iterator[Path]:
    with _flock(
        LOCK_DIR / f"vbbackup-{uuid}.lock",
        lambda holder: (
            f"another vbbackup run (pid {holder}) is backing up domain {domain!r}; "
            "wait for it to finish"
        ),
    ) as path:
        yield path


@contextlib.contextmanager
def directory_lock(directory: Path, doing: str) -> Iterator[Path]:
    """The one writer of ``directory``; ``doing`` says what this run does, for the message."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(directory))).hexdigest()[:16]
    with _flock(
        LOCK_DIR / f"vbbackup-dir-{key}.lock",
        lambda holder: (
            f"another vbbackup run (pid {holder}) is writing {directory}; "
            f"wait for it to finish before {doing}"
        ),
    ) as path:
        yield path


@contextlib.contextmanager
def boot_lock(directory: Path) -> Iterator[Path]:
    """One ``verify --boot`` of a set at a time (the set itself is not written)."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(directory))).hexdigest()[:16]
    with _flock(
        LOCK_DIR / f"vbbackup-boot-{key}.lock",
        lambda holder: f"another verify --boot (pid {holder}) is booting {directory}; wait for it",
    ) as path:
        yield path


@contextlib.contextmanager
def _flock(path: Path, busy: Callable[[str], str]) -> Iterator[Path]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise VbError(f"cannot create lock file {path}: {err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise BackupBusyError(busy(holder or "?")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)
