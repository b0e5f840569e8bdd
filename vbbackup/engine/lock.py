"""One backup of a domain at a time: an flock held for the whole run.

The lock is per domain (by UUID) and lives in /run/lock, so two runs into
different directories are refused too; the kernel drops it when the process
dies, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from vbbackup.errors import BackupBusyError, VbError

LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")


@contextlib.contextmanager
def domain_lock(domain: str, uuid: str) -> Iterator[Path]:
    path = LOCK_DIR / f"vbbackup-{uuid}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise VbError(f"cannot create lock file {path}: {err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise BackupBusyError(
                f"another vbbackup run (pid {holder or '?'}) is backing up domain "
                f"{domain!r}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)
