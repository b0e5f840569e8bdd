"""Durable, atomic output files.

A file is written as ``NAME.partial``, fsync'ed, renamed to ``NAME`` and the
directory fsync'ed: after a crash there is either a complete file or a
``.partial`` that every reader ignores, never a half-written file that
looks finished.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vbbackup.errors import StreamFormatError, TargetExistsError, VbError
from vbbackup.format.sums import SUMS_SUFFIX, Sums
from vbbackup.format.writer import StreamWriter

PARTIAL_SUFFIX = ".partial"
CHECKSUM_SUFFIX = ".chksum"
_BUFFER = 1024 * 1024


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + PARTIAL_SUFFIX)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield ``path.partial`` to fill (by us or a tool); it becomes ``path`` only on success.

    On success the partial is fsync'ed, renamed and the directory fsync'ed; on
    error it is removed. Refuses an existing ``path`` unless ``overwrite``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise TargetExistsError(f"{path} already exists; refusing to overwrite it")
    tmp = partial_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_output(path: Path | str, *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """Yield a buffered binary file that becomes ``path`` only on success."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            f = open(tmp, "wb", buffering=_BUFFER)  # noqa: SIM115 - closed below
        except OSError as err:
            raise VbError(f"cannot write {tmp}: {err.strerror}") from None
        with f:
            yield f


def write_small_file(path: Path | str, data: bytes, *, overwrite: bool = True) -> None:
    """Write a small side file (JSON, XML, checksum) atomically."""
    with atomic_output(path, overwrite=overwrite) as f:
        f.write(data)


def checksum_path(data_path: Path | str) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(data_path.name + CHECKSUM_SUFFIX)


def write_checksum(data_path: Path | str, value: int) -> None:
    """``<file>.chksum``: the decimal adler32 of the data file's bytes."""
    write_small_file(checksum_path(data_path), str(value).encode("ascii"))


def read_checksum(data_path: Path | str) -> int | None:
    """The stored adler32, or None when there is no checksum file."""
    path = checksum_path(data_path)
    try:
        text = path.read_bytes().decode("ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        raise VbError(f"{path}: not a decimal checksum: {text[:40]!r}") from None


def file_adler32(path: Path | str) -> int:
    """adler32 (zlib, start value 1) of a whole file, read in bounded pieces."""
    value = 1
    with open(path, "rb") as f:
        while chunk := f.read(_BUFFER * 4):
            value = zlib.adler32(chunk, value)
    return value


def sums_path(data_path: Path | str) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(data_path.name + SUMS_SUFFIX)


def write_sums(data_path: Path | str, sums: Sums, *, overwrite: bool = False) -> None:
    """``<file>.sums``: the per-piece checksums of the data file (``format.sums``)."""
    write_small_file(sums_path(data_path), sums.to_bytes(), overwrite=overwrite)


def read_sums(data_path: Path | str) -> Sums | None:
    """The data file's checksums, None when it has none; a damaged one raises."""
    path = sums_path(data_path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StreamFormatError(str(path), 0, f"cannot read: {err.strerror}") from None
    sums = Sums.from_bytes(raw, str(path))
    if sums.data_file != Path(data_path).name:
        raise StreamFormatError(
            str(path), 0, f"checksum file belongs to {sums.data_file}, not {Path(data_path).name}"
        )
    return sums


def write_stream_checks(data_path: Path | str, writer: StreamWriter) -> None:
    """A finished stream's ``.chksum`` (whole file) and ``.sums`` (every piece, the layout)."""
    write_checksum(data_path, writer.checksum)
    write_sums(data_path, writer.sums(Path(data_path).name), overwrite=True)


@contextlib.contextmanager
def run_log(path: Path, what: str, done: str | None = None) -> Iterator[None]:
    """A run's own log beside what it writes (backup.<level>.<time>.log, restore.<time>.log):
    every record of the ``vbbackup`` loggers while inside, at INFO; the error that ends the
    block as its last line (else ``done``); fsync'ed before the block is left."""
    try:
        handler = logging.FileHandler(path)
    except OSError as err:
        raise VbError(f"cannot write the {what} {path}: {err.strerror}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("vbbackup")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    run = logging.getLogger("vbbackup.run")
    try:
        yield
        if done:
            run.info(done)
    except BaseException as err:
        run.error("failed: %s", err)
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.flush()
        if handler.stream is not None:
            os.fsync(handler.stream.fileno())
        handler.close()
