"""A point in time of one disk, readable at any offset by many threads.

Opening indexes each file of the chain (headers only); the first read of
a region of the disk overlays the indexes there (``RegionMap``). After
that a read is a binary search and one ``os.pread`` per extent it spans
(or an lz4 decode, cached, for compressed streams). Nothing is replayed
or copied.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from vbbackup.chain.backupset import BackupSet, PointInTime
from vbbackup.chain.cache import DEFAULT_BUDGET, DecodedCache
from vbbackup.chain.extentmap import ZERO
from vbbackup.chain.regionmap import RegionMap
from vbbackup.errors import ChainError, StreamFormatError
from vbbackup.format import PayloadReader, StreamIndex, read_index
from vbbackup.format.heap import keep_freed_buffers
from vbbackup.format.sums import SumsChecker
from vbbackup.fsutil import read_sums, sums_path

_ZEROS = memoryview(bytes(1024 * 1024))
_CHECK_STEP = 128 * 1024
# Reads up to this size copy from a mapping of the file: no system call, so a booting guest's
# small random reads do not hand Python's GIL to another nbdkit thread and back for each one.
# Larger reads (restore, copies) use preadv, which reads ahead and never faults.
_MAPPED_READ = 64 * 1024


class PointInTimeView:
    """Bytes and extents of a disk at one point; thread-safe, read-only.

    ``read``/``readinto`` and ``extents`` take disk offsets; reads must lie
    inside ``[0, size)``. Use as a context manager, or call ``close()``.
    """

    def __init__(self, point: PointInTime, cache_budget: int = DEFAULT_BUDGET) -> None:
        self.point = point
        self.size = point.virtual_size
        self._stack = ExitStack()
        self._fds: list[int] = []
        self._mapped: list[memoryview | None] = []
        self._indexes: list[StreamIndex] = []
        self._readers: list[PayloadReader] = []
        self._checkers: list[SumsChecker | None] = []
        self._cache = DecodedCache(cache_budget)
        with self._stack as stack:
            for data in point.files:
                f = stack.enter_context(_open(data.path))
                index = read_index(f, str(data.path))
                reader = PayloadReader(f, index, cache_chunks=0)
                self._fds.append(f.fileno())
                self._mapped.append(None if index.compressed else _map(stack, f, index))
                self._indexes.append(index)
                self._readers.append(reader)
                sums = read_sums(data.path)
                checker = None if sums is None else reader.checker(sums, str(sums_path(data.path)))
                self._checkers.append(checker)
            if any(index.compressed for index in self._indexes):
                keep_freed_buffers()  # decoded pieces: reuse their memory
            self.map = RegionMap(self.size, [(i.kinds, i.starts, i.lengths) for i in self._indexes])
            self._stack = stack.pop_all()

    def __enter__(self) -> PointInTimeView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(str(f.path) for f in self.point.files)

    @property
    def unchecked(self) -> tuple[str, ...]:
        """Files without a ``.sums`` side file: their data cannot be checked as it is read."""
        return tuple(
            str(f.path) for f, c in zip(self.point.files, self._checkers, strict=True) if c is None
        )

    def unchecked_warning(self) -> str | None:
        """The one line a command prints when some data is served unchecked."""
        return _unchecked_line([Path(p).name for p in self.unchecked])

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the disk from ``offset``."""
        buf = bytearray(length)
        self.readinto(buf, offset)
        return bytes(buf)

    def readinto(self, buf: bytearray | memoryview, offset: int) -> None:
        """Fill ``buf`` with the disk's bytes from ``offset`` (nbdkit's pread)."""
        out = memoryview(buf).cast("B")
        one = self.map.within(offset, len(out))
        segments = [(offset, len(out), *one)] if one else self.map.segments(offset, len(out))
        for off, n, layer, frame in segments:
            dst = out[off - offset : off - offset + n]
            if layer == ZERO:
                _fill_zero(dst)
                continue
            index = self._indexes[layer]
            in_frame = off - index.starts[frame]
            if index.compressed:
                self._read_compressed(dst, layer, frame, in_frame)
            elif (checker := self._checkers[layer]) is None:
                self._pread(dst, layer, index.payload_pos[frame] + in_frame)
            else:
                self._pread_checked(dst, layer, frame, in_frame, checker)

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]:
        """``(offset, length, is_zero)`` runs covering the range (see RegionMap)."""
        return self.map.extents(offset, length, limit)

    def _pread(self, dst: memoryview, layer: int, pos: int) -> None:
        mapped = self._mapped[layer]
        if mapped is not None and len(dst) <= _MAPPED_READ:
            dst[:] = self._mapped_span(mapped, layer, pos, len(dst))
            return
        fd = self._fds[layer]
        done = 0
        while done < len(dst):
            got = os.preadv(fd, [dst[done:]], pos + done)
            if got == 0:
                raise StreamFormatError(
                    self._indexes[layer].name, pos + done, "file ends inside a data frame"
                )
            done += got

    def _pread_checked(
        self, dst: memoryview, layer: int, frame: int, in_frame: int, checker: SumsChecker
    ) -> None:
        """Read whole checksum pieces around ``dst``'s range, check them, copy the range."""
        index = self._indexes[layer]
        p = checker.piece_size
        lo = in_frame // p * p
        hi = min(-(-(in_frame + len(dst)) // p) * p, index.lengths[frame])
        pos = index.payload_pos[frame] + lo
        mapped = self._mapped[layer]
        if mapped is not None and hi - lo <= _MAPPED_READ:  # check the mapped bytes, copy once
            span = self._mapped_span(mapped, layer, pos, hi - lo)
            checker.check(frame, 0, lo // p, span, index.starts[frame] + lo, pos)
            dst[:] = span[in_frame - lo : in_frame - lo + len(dst)]
            return
        if lo == in_frame and hi == in_frame + len(dst):
            span = dst
        else:
            span = memoryview(bytearray(hi - lo))
        # read and check in steps that stay in the CPU cache between the two
        step = max(p, _CHECK_STEP // p * p)
        disk = index.starts[frame] + lo
        for off in range(0, len(span), step):
            part = span[off : off + step]
            self._pread(part, layer, pos + off)
            checker.check(frame, 0, (lo + off) // p, part, disk + off, pos + off)
        if span is not dst:
            dst[:] = span[in_frame - lo : in_frame - lo + len(dst)]

    def _mapped_span(self, mapped: memoryview, layer: int, pos: int, n: int) -> memoryview:
        if pos + n > len(mapped):
            raise StreamFormatError(
                self._indexes[layer].name, len(mapped), "file ends inside a data frame"
            )
        return mapped[pos : pos + n]

    def _decode_checked(
        self, layer: int, frame: int, n: int, raw_off: int, file_pos: int, csize: int, raw_len: int
    ) -> bytes:
        data = self._readers[layer].decode_piece(file_pos, csize, raw_len)
        checker = self._checkers[layer]
        if checker is not None:
            start = self._indexes[layer].starts[frame] + raw_off
            checker.check(frame, n, 0, data, start, file_pos, compressed=True)
        return data

    def _read_compressed(self, dst: memoryview, layer: int, frame: int, offset: int) -> None:
        reader = self._readers[layer]
        end = offset + len(dst)
        for n, (raw_off, raw_len, file_pos, csize) in reader.chunks_in(frame, offset, len(dst)):
            data = self._cache.get(
                (layer, frame, n),
                partial(self._decode_checked, layer, frame, n, raw_off, file_pos, csize, raw_len),
            )
            lo = max(offset, raw_off)
            hi = min(end, raw_off + raw_len)
            dst[lo - offset : hi - offset] = memoryview(data)[lo - raw_off : hi - raw_off]


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller's ExitStack owns it
    except FileNotFoundError:
        raise ChainError(f"missing file in the chain: {path}") from None
    except OSError as err:
        raise ChainError(f"cannot open {path}: {err.strerror}") from None


def _map(stack: ExitStack, f: BinaryIO, index: StreamIndex) -> memoryview | None:
    """A read-only mapping of an uncompressed file, released when the view closes."""
    size = os.fstat(f.fileno()).st_size
    if size == 0 or not index.payload_pos:
        return None
    try:
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None  # preadv serves every read then
    mapping.madvise(mmap.MADV_RANDOM)  # a fault reads its page, not a window around it
    stack.callback(_unmap, mapping)
    view = memoryview(mapping)
    stack.callback(_unmap, view)  # (runs first: a mapping with a live view cannot close)
    return view


def _unmap(mapped: mmap.mmap | memoryview) -> None:
    """Close now, or, while a slice still lives (say in an error's traceback), when the last
    slice goes."""
    with contextlib.suppress(BufferError):
        mapped.release() if isinstance(mapped, memoryview) else mapped.close()


def _fill_zero(dst: memoryview) -> None:
    step = len(_ZEROS)
    for pos in range(0, len(dst), step):
        piece = dst[pos : pos + step]
        piece[:] = _ZEROS[: len(piece)]


def _unchecked_line(names: Sequence[str]) -> str | None:
    if not names:
        return None
    return (
        f"warning: {', '.join(names)} {'has' if len(names) == 1 else 'have'} no checksum "
        "file: the data cannot be checked as it is read "
        "(`vbbackup verify --add-sums DIR` adds them)"
    )


def unchecked_warnings(
    directory: str | os.PathLike[str], disks: Sequence[str] = (), until: str | None = None
) -> list[str]:
    """Per disk of a point (every disk by default): the line for files without ``.sums``."""
    try:
        backup = BackupSet(directory)
    except ChainError:
        return []  # the command itself says what is wrong with the directory
    lines = []
    for disk in disks or backup.disks:
        try:
            point = backup.resolve(disk, until)
        except ChainError:
            continue  # the command itself says what is wrong with this disk

        names = [f.path.name for f in point.files if not sums_path(f.path).exists()]
        line = _unchecked_line(names)
        if line:
            lines.append(f"{disk}: {line}")
    return lines


def open_view(
    directory: str | os.PathLike[str],
    disk: str | None = None,
    until: str | None = None,
    files: Sequence[str | os.PathLike[str]] | None = None,
) -> PointInTimeView:
    """Resolve a point in a backup directory and open it (the one entry point)."""
    point = BackupSet(directory).resolve(disk, until, files)
    return PointInTimeView(point)
