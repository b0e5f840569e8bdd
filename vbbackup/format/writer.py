"""Sequential writer of one stream file.

Layout written (compressed streams add the trailer after ``stop``)::

    meta 0 LEN \\r\\n <json> \\r\\n
    zero START LEN \\r\\n
    data START LEN \\r\\n <LEN bytes, or one lz4 frame> \\r\\n
    stop 0 0 \\r\\n
    [<json trailer> \\r\\n comp 0 LEN(json) \\r\\n]
"""

from __future__ import annotations

import json
import zlib
from array import array
from typing import BinaryIO

from vbbackup.format import frames
from vbbackup.format.compression import MAX_CHUNK, PIECE, compress_pieces
from vbbackup.format.meta import StreamMeta
from vbbackup.format.sums import DIGEST_SIZE, PIECE_SIZE, PieceHasher, Sums, layout_digest

_KIND_ZERO, _KIND_DATA = 0, 1

TrailerEntry = int | dict[str, list[int]]


class StreamWriter:
    """Writes frames in order; keeps a running adler32 of all bytes written.

    Data ranges are written in pieces (``write_chunk``) so that no caller
    ever holds a whole extent in memory. It also records what ``sums()``
    returns: a digest of every piece of decoded data and of the frame layout.
    """

    def __init__(self, fileobj: BinaryIO, meta: StreamMeta) -> None:
        self._f = fileobj
        self.meta = meta
        self.checksum = 1
        self.bytes_written = 0
        self.data_bytes = 0
        self._trailer: list[TrailerEntry] = []
        self._open_start = -1
        self._open_length = 0
        self._open_done = 0
        self._finished = False
        # A compressed stream is read a whole lz4 piece at a time: one digest per piece
        # costs the least; uncompressed data is checked in small pieces (random reads).
        self._hasher = PieceHasher(PIECE if meta.is_compressed else PIECE_SIZE)
        self._kinds = bytearray()
        self._starts = array("Q")
        self._lengths = array("Q")
        self._psizes = array("Q")
        payload = self._meta_json = meta.to_json()
        self._write(frames.encode_header(frames.META, 0, len(payload)))
        self._write(payload)
        self._write(frames.TERM)

    @property
    def compressed(self) -> bool:
        return self.meta.is_compressed

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self._f.write(data)
        self.checksum = zlib.adler32(data, self.checksum)
        self.bytes_written += len(data)

    def _frame(self, kind: int, start: int, length: int, payload: int) -> None:
        self._kinds.append(kind)
        self._starts.append(start)
        self._lengths.append(length)
        self._psizes.append(payload)

    def _check_idle(self) -> None:
        if self._finished:
            raise ValueError("stream already finished")
        if self._open_start >= 0:
            raise ValueError("a data frame is still open")

    def write_zero(self, start: int, length: int) -> None:
        """A range that reads as zeroes (no payload)."""
        self._check_idle()
        if length <= 0:
            raise ValueError("zero frame needs a positive length")
        self._write(frames.encode_header(frames.ZERO, start, length))
        self._frame(_KIND_ZERO, start, length, 0)

    def begin_data(self, start: int, length: int) -> None:
        """Open a data range [start, start+length); fill with chunks.

        Uncompressed, the range is one data frame. Compressed, each lz4
        piece is a data frame of its own: virtnbdrestore reads a data frame
        shorter than QEMU's 32 MiB request limit as one lz4 frame.
        """
        self._check_idle()
        if length <= 0:
            raise ValueError("data frame needs a positive length")
        if not self.compressed:
            self._write(frames.encode_header(frames.DATA, start, length))
            self._frame(_KIND_DATA, start, length, length)
            self._hasher.start_unit()
        self._open_start = start
        self._open_length = length
        self._open_done = 0

    def write_chunk(self, raw: bytes | bytearray | memoryview) -> None:
        """Next piece of the open frame; compressed here if the stream is."""
        if self.compressed:
            lz4_frames = compress_pieces(raw, int(self.meta.compressed))
            self.write_compressed_pieces(lz4_frames, raw)
        else:
            self._advance(len(raw))
            self._write(raw)
            self._hasher.update(raw)

    def write_compressed_chunk(
        self, frame: bytes, raw: bytes | bytearray | memoryview, digest: bytes | None = None
    ) -> None:
        """Next piece of the open range: ``raw`` and its lz4 frame, a data frame of its own.

        ``digest``: ``piece_digest(raw)`` when the caller computed it already.
        """
        if not self.compressed:
            raise ValueError("stream is not compressed")
        raw_length = len(raw)
        if raw_length > MAX_CHUNK:
            raise ValueError(f"compressed piece covers {raw_length} bytes > {MAX_CHUNK}")
        piece_start = self._open_start + self._open_done
        self._advance(raw_length)
        self._write(frames.encode_header(frames.DATA, piece_start, raw_length))
        self._write(frame)
        self._write(frames.TERM)
        self._trailer.append(len(frame))
        self._frame(_KIND_DATA, piece_start, raw_length, len(frame))
        if digest is None:
            self._hasher.unit(raw)
        else:
            self._hasher.add_digest(digest)

    def write_compressed_pieces(
        self,
        lz4_frames: list[bytes],
        raw: bytes | bytearray | memoryview,
        digests: bytes | None = None,
    ) -> None:
        """``compress_pieces(raw)``' frames: ``PIECE`` bytes of ``raw`` each.

        ``digests``: ``compress_and_digest``'s, one per frame (else hashed here).
        """
        mv = memoryview(raw).cast("B")
        pos = 0
        for k, frame in enumerate(lz4_frames):
            n = min(PIECE, len(mv) - pos)
            if n <= 0:
                raise ValueError("more compressed pieces than data")
            digest = None if digests is None else digests[k * DIGEST_SIZE : (k + 1) * DIGEST_SIZE]
            self.write_compressed_chunk(frame, mv[pos : pos + n], digest)
            pos += n
        if pos != len(mv):
            raise ValueError(f"compressed pieces are {len(mv) - pos} bytes short")

    def _advance(self, raw_length: int) -> None:
        if self._open_start < 0:
            raise ValueError("no data frame is open")
        if raw_length <= 0:
            raise ValueError("empty chunk")
        if self._open_done + raw_length > self._open_length:
            raise ValueError(
                f"data frame at {self._open_start} overrun: "
                f"{self._open_done + raw_length} > {self._open_length}"
            )
        self._open_done += raw_length

    def end_data(self) -> None:
        """Close the open frame; its chunks must cover its whole length."""
        if self._open_start < 0:
            raise ValueError("no data frame is open")
        if self._open_done != self._open_length:
            raise ValueError(
                f"data frame at {self._open_start} short: "
                f"{self._open_done} of {self._open_length} bytes written"
            )
        if not self.compressed:
            self._write(frames.TERM)
            self._hasher.end_unit()
        self.data_bytes += self._open_length
        self._open_start = -1

    def write_data(self, start: int, data: bytes | bytearray | memoryview) -> None:
        """A whole data frame at once (small ranges, tests)."""
        self.begin_data(start, len(data))
        self.write_chunk(data)
        self.end_data()

    def finish(self) -> None:
        """Write ``stop`` (and the compression trailer); idempotent."""
        if self._finished:
            return
        self._check_idle()
        self._write(frames.encode_header(frames.STOP, 0, 0))
        if self.compressed:
            trailer = json.dumps(self._trailer).encode("ascii")
            self._write(trailer)
            self._write(frames.TERM)
            self._write(frames.encode_header(frames.COMP, 0, len(trailer)))
        self._finished = True

    def sums(self, data_file: str) -> Sums:
        """The ``.sums`` side file of the finished stream (``data_file``: its base name)."""
        if not self._finished:
            raise ValueError("stream not finished")
        layout = layout_digest(
            self._meta_json, self._kinds, self._starts, self._lengths, self._psizes, {}
        )
        return Sums(data_file=data_file, layout=layout, digests=bytes(self._hasher.digests),
                    piece_size=self._hasher.piece_size)  # fmt: skip
