"""End-to-end checksums of a stream: one per piece of decoded data, plus its frame layout.

``<file>.chksum`` (adler32 of the whole file) can only be checked by reading
the whole file; a reader serving random blocks needs a checksum of exactly the
piece it reads. The side file ``<file>.sums`` (virtnbdbackup ignores it) holds:

    b"VBSUMS1\\n"                   magic
    u32 H, then H bytes of JSON    {"algorithm": "xxh3-128", "pieceSize": 16384,
                                    "dataFile": "vda.full.data", "layout": "<32 hex>",
                                    "pieces": N}
    N x 16 bytes                   xxh3-128 of each piece, in stream order
    16 bytes                       xxh3-128 of everything above (the side file's own check)

A *unit* is what a reader decodes at once: an uncompressed data frame's
payload, or one lz4 frame of a compressed one. Each unit's decoded bytes are
cut into pieces of ``pieceSize`` from the unit's start (the last one shorter).
The layout digest covers the meta JSON and every frame's kind, start, length
and payload size, so a flipped header digit is caught before a byte is served.
All integers little-endian.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Final

import xxhash

from vbbackup.errors import StreamFormatError

MAGIC: Final = b"VBSUMS1\n"
ALGORITHM: Final = "xxh3-128"
PIECE_SIZE: Final = 16 * 1024
DIGEST_SIZE: Final = 16
SUMS_SUFFIX: Final = ".sums"
_MAX_HEADER: Final = 1 << 16

_digest = xxhash.xxh3_128_digest


def piece_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The digest of one piece, as ``.sums`` holds it."""
    return _digest(data)


class DataChecksumError(StreamFormatError):
    """Decoded bytes differ from what the backup recorded: damaged data, never served."""


def _le(values: array[int]) -> bytes:
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


def layout_digest(
    meta_json: bytes,
    kinds: bytes | bytearray,
    starts: array[int],
    lengths: array[int],
    payload_sizes: array[int],
    chunk_sizes: dict[int, tuple[int, ...]],
) -> bytes:
    """xxh3-128 of the meta JSON and every frame's place (what ``read_index`` finds)."""
    h = xxhash.xxh3_128()
    h.update(struct.pack("<Q", len(meta_json)))
    h.update(meta_json)
    h.update(struct.pack("<Q", len(kinds)))
    h.update(bytes(kinds))
    for column in (starts, lengths, payload_sizes):
        h.update(_le(column))
    for i in sorted(chunk_sizes):
        h.update(struct.pack(f"<QQ{len(chunk_sizes[i])}Q", i, len(chunk_sizes[i]),
                             *chunk_sizes[i]))  # fmt: skip
    return h.digest()


class PieceHasher:
    """Digests of decoded data fed in any chunking: ``start_unit``, ``update``..., ``end_unit``."""

    def __init__(self, piece_size: int = PIECE_SIZE) -> None:
        self.piece_size = piece_size
        self.digests = bytearray()
        self._partial: xxhash.xxh3_128 | None = None
        self._filled = 0

    def start_unit(self) -> None:
        if self._partial is not None:
            raise ValueError("a unit is still open")
        self._filled = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data).cast("B")
        p = self.piece_size
        pos = 0
        partial = self._partial
        if partial is not None:  # finish the piece the last update left open
            take = min(p - self._filled, len(mv))
            partial.update(mv[:take])
            self._filled += take
            pos = take
            if self._filled < p:
                return
            self.digests += partial.digest()
            self._partial, self._filled = None, 0
        end = len(mv)
        whole = pos + (end - pos) // p * p
        digests = self.digests
        for i in range(pos, whole, p):
            digests += _digest(mv[i : i + p])
        if whole < end:
            self._partial = xxhash.xxh3_128(mv[whole:end])
            self._filled = end - whole

    def end_unit(self) -> None:
        if self._partial is not None:
            self.digests += self._partial.digest()
        self._partial, self._filled = None, 0

    def add_digest(self, digest: bytes) -> None:
        """A whole unit of at most one piece, hashed elsewhere (a compression worker)."""
        if self._partial is not None or len(digest) != DIGEST_SIZE:
            raise ValueError("a unit is open, or not one digest")
        self.digests += digest

    def unit(self, data: bytes | bytearray | memoryview) -> None:
        """One whole unit at once."""
        self.start_unit()
        self.update(data)
        self.end_unit()


@dataclass(frozen=True)
class Sums:
    """The content of a ``.sums`` side file."""

    data_file: str
    layout: bytes
    digests: bytes
    piece_size: int = PIECE_SIZE

    @property
    def pieces(self) -> int:
        return len(self.digests) // DIGEST_SIZE

    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "algorithm": ALGORITHM,
                "pieceSize": self.piece_size,
                "dataFile": self.data_file,
                "layout": self.layout.hex(),
                "pieces": self.pieces,
            }
        ).encode()
        body = MAGIC + struct.pack("<I", len(header)) + header + self.digests
        return body + _digest(body)

    @classmethod
    def from_bytes(cls, raw: bytes, path: str) -> Sums:
        """Parse and self-check a side file; any damage is a ``StreamFormatError``."""
        head = len(MAGIC) + 4
        if len(raw) < head + DIGEST_SIZE or not raw.startswith(MAGIC):
            raise StreamFormatError(path, 0, "not a vbbackup checksum file")
        if _digest(raw[:-DIGEST_SIZE]) != raw[-DIGEST_SIZE:]:
            raise StreamFormatError(path, len(raw) - DIGEST_SIZE, "checksum file is damaged")
        (hlen,) = struct.unpack_from("<I", raw, len(MAGIC))
        if hlen > _MAX_HEADER or head + hlen > len(raw) - DIGEST_SIZE:
            raise StreamFormatError(path, len(MAGIC), f"header length {hlen} overruns the file")
        try:
            header = json.loads(raw[head : head + hlen])
            algorithm, piece, name = header["algorithm"], header["pieceSize"], header["dataFile"]
            layout, pieces = bytes.fromhex(header["layout"]), header["pieces"]
        except (ValueError, KeyError, TypeError) as err:
            raise StreamFormatError(path, head, f"bad header: {err}") from None
        if algorithm != ALGORITHM:
            raise StreamFormatError(path, head, f"unknown checksum algorithm {algorithm!r}")
        if not isinstance(piece, int) or piece <= 0 or not isinstance(pieces, int):
            raise StreamFormatError(path, head, "bad pieceSize or pieces")
        digests = raw[head + hlen : -DIGEST_SIZE]
        if len(digests) != pieces * DIGEST_SIZE:
            raise StreamFormatError(path, head + hlen, f"header says {pieces} pieces, file differs")
        return cls(data_file=str(name), layout=layout, digests=digests, piece_size=piece)


def pieces_in(length: int, piece_size: int) -> int:
    return -(-length // piece_size)


class SumsChecker:
    """Checks decoded units of one indexed stream against its ``Sums``.

    ``units(i)`` gives the decoded lengths of data frame i's units: called
    only for the compressed frames of more than one lz4 frame.
    """

    def __init__(
        self,
        sums: Sums,
        sums_path: str,
        name: str,
        layout: bytes,
        kinds: bytes | bytearray,
        lengths: Sequence[int],
        multi_unit: Iterable[int],
        units: Callable[[int], Sequence[int]],
    ) -> None:
        self.name = name
        self.sums_path = sums_path
        p = self.piece_size = sums.piece_size
        if sums.layout != layout:
            raise DataChecksumError(
                name, 0, f"frame layout does not match {sums_path} (a header or the meta changed)"
            )
        counts = [pieces_in(n, p) if k else 0 for k, n in zip(kinds, lengths, strict=True)]
        self._unit_bases: dict[int, list[int]] = {}
        for i in multi_unit:
            per_unit = [pieces_in(n, p) for n in units(i)]
            self._unit_bases[i] = [0, *accumulate(per_unit)][:-1]
            counts[i] = sum(per_unit)
        self._bases = array("Q", [0, *accumulate(counts)][:-1]) if counts else array("Q")
        total = sum(counts)
        if total != sums.pieces:
            raise DataChecksumError(
                name, 0, f"{sums_path} lists {sums.pieces} pieces, the stream has {total}"
            )
        self._digests = sums.digests

    def first_piece(self, frame: int, unit: int = 0) -> int:
        base = self._bases[frame]
        return base + self._unit_bases[frame][unit] if unit else base

    def check(
        self,
        frame: int,
        unit: int,
        piece: int,
        data: bytes | bytearray | memoryview,
        disk_offset: int,
        file_pos: int,
        compressed: bool = False,
    ) -> None:
        """``data`` = whole pieces ``piece``, ``piece+1``... of a unit (the last may be its tail).

        ``disk_offset``/``file_pos``: where ``data`` starts (for a compressed unit,
        the lz4 frame's position), for the message. Raises at the first damaged piece.
        """
        mv = memoryview(data).cast("B")
        p = self.piece_size
        n = self.first_piece(frame, unit) + piece
        digests = self._digests
        for off in range(0, len(mv), p):  # damaged()'s loop without a generator: a hot path
            at = n * DIGEST_SIZE
            if _digest(mv[off : off + p]) != digests[at : at + DIGEST_SIZE]:
                raise self._error(frame, mv, off, disk_offset, file_pos, compressed)
            n += 1

    def damaged(
        self,
        frame: int,
        unit: int,
        piece: int,
        data: bytes | bytearray | memoryview,
        disk_offset: int,
        file_pos: int,
        compressed: bool = False,
    ) -> Iterator[DataChecksumError]:
        """Like ``check``, but every damaged piece, not just the first (``verify``)."""
        mv = memoryview(data).cast("B")
        p = self.piece_size
        n = self.first_piece(frame, unit) + piece
        digests = self._digests
        for off in range(0, len(mv), p):
            at = n * DIGEST_SIZE
            if _digest(mv[off : off + p]) != digests[at : at + DIGEST_SIZE]:
                yield self._error(frame, mv, off, disk_offset, file_pos, compressed)
            n += 1

    def _error(
        self,
        frame: int,
        mv: memoryview,
        off: int,
        disk_offset: int,
        file_pos: int,
        compressed: bool,
    ) -> DataChecksumError:
        length = min(self.piece_size, len(mv) - off)
        return DataChecksumError(
            self.name,
            file_pos if compressed else file_pos + off,
            f"frame {frame}: disk bytes [{disk_offset + off}, +{length}) do not match "
            f"their checksum in {self.sums_path}: damaged data",
        )
