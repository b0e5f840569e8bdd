"""Reading the payload of data frames, uncompressed or lz4.

Uses positional reads (``os.pread``) so one reader serves many threads.
"""

from __future__ import annotations

import io
import os
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

from vbbackup.errors import StreamFormatError
from vbbackup.format.compression import (
    FRAME_HEADER_MAX,
    MAX_CHUNK,
    chunk_raw_size,
    decompress_chunk,
)
from vbbackup.format.index import KIND_DATA, StreamIndex
from vbbackup.format.sums import PieceHasher, Sums, SumsChecker

# Uncompressed payloads are handed out in pieces of at most this size.
READ_PIECE = 4 * 1024 * 1024


class PayloadReader:
    """Bytes of data frames of one indexed stream.

    For compressed streams the decoded lz4 frames are kept in a small LRU
    cache, because nearby reads (a file system walking a directory) hit the
    same frame again and again.
    """

    def __init__(self, fileobj: BinaryIO, index: StreamIndex, cache_chunks: int = 8) -> None:
        self._f = fileobj
        self.index = index
        self._fd: int | None
        try:
            self._fd = fileobj.fileno()
        except (OSError, AttributeError, io.UnsupportedOperation):
            self._fd = None
        self._lock = threading.Lock()
        self._layouts: dict[int, tuple[tuple[int, int, int, int], ...]] = {}
        self._offsets: dict[int, list[int]] = {}
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_max = cache_chunks

    def checker(self, sums: Sums, sums_name: str) -> SumsChecker:
        """A checker of this stream's decoded units against ``sums`` (layout checked now)."""
        index = self.index
        return SumsChecker(
            sums,
            sums_name,
            index.name,
            index.layout_digest(),
            index.kinds,
            index.lengths,
            multi_unit=list(index.chunk_sizes),
            units=lambda i: [entry[1] for entry in self.chunk_layout(i)],
        )

    def pread(self, size: int, pos: int) -> bytes:
        if self._fd is not None:
            data = os.pread(self._fd, size, pos)
        else:
            with self._lock:
                self._f.seek(pos)
                data = self._f.read(size)
        if len(data) != size:
            raise StreamFormatError(
                self.index.name, pos, f"file ends early: wanted {size} bytes, got {len(data)}"
            )
        return data

    def _check_data(self, i: int) -> None:
        if self.index.kinds[i] != KIND_DATA:
            raise ValueError(f"frame {i} is not a data frame")

    def chunk_layout(self, i: int) -> tuple[tuple[int, int, int, int], ...]:
        """(raw offset in frame, raw length, file position, compressed size) per lz4 frame."""
        self._check_data(i)
        idx = self.index
        sizes = idx.chunks(i)
        if len(sizes) == 1:  # the usual case: nothing to read or keep
            return ((0, idx.lengths[i], idx.payload_pos[i], sizes[0]),)
        layout = self._layouts.get(i)
        if layout is not None:
            return layout
        entries = []
        raw_off = 0
        file_pos = idx.payload_pos[i]
        for n, csize in enumerate(sizes):
            prefix = self.pread(min(csize, FRAME_HEADER_MAX), file_pos)
            raw = chunk_raw_size(prefix, idx.name, file_pos)
            if raw is None:  # no content size stored: decode to learn it
                raw = len(self._decode(i, n, file_pos, csize))
            entries.append((raw_off, raw, file_pos, csize))
            raw_off += raw
            file_pos += csize
        if raw_off != idx.lengths[i]:
            raise StreamFormatError(
                idx.name,
                idx.positions[i],
                f"lz4 frames decode to {raw_off} bytes, frame header says {idx.lengths[i]}",
            )
        layout = tuple(entries)
        self._layouts[i] = layout
        return layout

    def chunks_in(
        self, i: int, offset: int, length: int
    ) -> list[tuple[int, tuple[int, int, int, int]]]:
        """``(n, layout entry)`` of the lz4 frames of frame i that [offset, +length) touches.

        A binary search: a frame of a long extent holds thousands of pieces.
        """
        layout = self.chunk_layout(i)
        if len(layout) == 1:
            return [(0, layout[0])]
        offsets = self._offsets.get(i)
        if offsets is None:
            offsets = self._offsets[i] = [entry[0] for entry in layout]
        first = max(bisect_right(offsets, offset) - 1, 0)
        last = bisect_right(offsets, offset + length - 1, first) if length else first
        return [(n, layout[n]) for n in range(first, last)]

    def decode_piece(self, file_pos: int, csize: int, raw_len: int | None = None) -> bytes:
        """One lz4 frame of a payload, decoded; checked against ``raw_len`` when known."""
        data = decompress_chunk(self.pread(csize, file_pos), self.index.name, file_pos)
        if raw_len is not None and len(data) != raw_len:
            raise StreamFormatError(
                self.index.name, file_pos, f"lz4 frame decodes to {len(data)} bytes, not {raw_len}"
            )
        return data

    def _decode(
        self, i: int, n: int, file_pos: int, csize: int, raw_len: int | None = None
    ) -> bytes:
        key = (i, n)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        data = self.decode_piece(file_pos, csize, raw_len)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return data

    def read(self, i: int, offset: int, length: int) -> bytes:
        """``length`` uncompressed bytes of frame i from ``offset`` in the frame."""
        self._check_data(i)
        idx = self.index
        if offset < 0 or length < 0 or offset + length > idx.lengths[i]:
            raise ValueError(f"range [{offset}, +{length}) outside frame {i}")
        if length == 0:
            return b""
        if not idx.compressed:
            return self.pread(length, idx.payload_pos[i] + offset)
        out = bytearray()
        end = offset + length
        for n, (raw_off, raw_len, file_pos, csize) in self.chunks_in(i, offset, length):
            data = self._decode(i, n, file_pos, csize, raw_len)
            lo = max(offset, raw_off) - raw_off
            hi = min(end, raw_off + raw_len) - raw_off
            out += data[lo:hi]
        return bytes(out)

    def iter_chunks(self, i: int) -> Iterator[bytes]:
        """The whole frame i, in pieces of bounded size, in order."""
        self._check_data(i)
        idx = self.index
        if not idx.compressed:
            pos, left = idx.payload_pos[i], idx.lengths[i]
            while left:
                n = min(left, READ_PIECE)
                yield self.pread(n, pos)
                pos += n
                left -= n
            return
        total = 0
        file_pos = idx.payload_pos[i]
        for csize in idx.chunks(i):
            data = decompress_chunk(self.pread(csize, file_pos), idx.name, file_pos)
            if len(data) > MAX_CHUNK * 4:
                raise StreamFormatError(idx.name, file_pos, "lz4 frame decodes to too much data")
            total += len(data)
            file_pos += csize
            yield data
        if total != idx.lengths[i]:
            raise StreamFormatError(
                idx.name,
                idx.positions[i],
                f"lz4 frames decode to {total} bytes, frame header says {idx.lengths[i]}",
            )

    def units(self, i: int) -> Iterator[tuple[int, int, int, int, bytes]]:
        """Data frame i decoded unit by unit (see ``format.sums``), in bounded pieces.

        Yields ``(unit, offset in the unit, offset in the frame, file position,
        bytes)``; an uncompressed frame is one unit read in ``READ_PIECE`` pieces.
        """
        idx = self.index
        if not idx.compressed:
            offset = 0
            for data in self.iter_chunks(i):
                yield 0, offset, offset, idx.payload_pos[i] + offset, data
                offset += len(data)
            return
        for n, (raw_off, raw_len, file_pos, csize) in enumerate(self.chunk_layout(i)):
            yield n, 0, raw_off, file_pos, self.decode_piece(file_pos, csize, raw_len)

    def compute_sums(self, data_file: str) -> Sums:
        """Checksums of every decoded piece as the file is now (``verify --add-sums``)."""
        hasher = PieceHasher()
        for i in range(len(self.index)):
            if self.index.kinds[i] != KIND_DATA:
                continue
            last = -1
            for unit, _offset, _in_frame, _pos, data in self.units(i):
                if unit != last:
                    if last >= 0:
                        hasher.end_unit()
                    hasher.start_unit()
                    last = unit
                hasher.update(data)
            hasher.end_unit()
        return Sums(data_file, self.index.layout_digest(), bytes(hasher.digests),
                    hasher.piece_size)  # fmt: skip

    def damaged_pieces(self, checker: SumsChecker, limit: int) -> list[StreamFormatError]:
        """Every piece whose bytes differ from ``checker``'s sums, and every frame that
        does not decode (at most ``limit``)."""
        idx = self.index
        p = checker.piece_size
        found: list[StreamFormatError] = []
        for i in range(len(idx)):
            if idx.kinds[i] != KIND_DATA:
                continue
            try:
                for unit, offset, in_frame, pos, data in self.units(i):
                    found += checker.damaged(i, unit, offset // p, data,
                                             idx.starts[i] + in_frame, pos,
                                             compressed=idx.compressed)  # fmt: skip
            except StreamFormatError as err:
                found.append(err)
            if len(found) >= limit:
                return found[:limit]
        return found
