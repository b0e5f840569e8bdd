"""lz4 frames as the stream stores them: one frame per piece of a data range.

Each piece is at most ``MAX_CHUNK`` bytes uncompressed, because
virtnbdrestore writes every decoded frame in one NBD request, and QEMU's NBD
server takes at most 32 MiB per request. We write pieces of ``PIECE`` bytes:
a random read decodes one whole piece, so small pieces make random reads of
a compressed set cheap, while lz4 (64 KiB linked blocks) loses almost nothing
by it (docs/performance.md has the figures).
"""

from __future__ import annotations

from typing import Final

import lz4.frame

from vbbackup.errors import StreamFormatError
from vbbackup.format.sums import piece_digest

MAX_CHUNK: Final = 32 * 1024 * 1024
PIECE: Final = 512 * 1024
DEFAULT_LEVEL: Final = 2
# An lz4 frame header with a content size is at most 19 bytes.
FRAME_HEADER_MAX: Final = 19


def compress_chunk(raw: bytes | bytearray | memoryview, level: int = DEFAULT_LEVEL) -> bytes:
    """One lz4 frame with block and content checksums (releases the GIL).

    Blocks of up to 1 MiB: a ``PIECE`` is one block, which compresses about
    10% and decodes about 15% faster than lz4's default of 64 KiB blocks,
    at the same ratio; any lz4 reader (virtnbdrestore's too) takes it.
    """
    return lz4.frame.compress(  # type: ignore[no-any-return]
        raw,
        compression_level=level,
        block_size=lz4.frame.BLOCKSIZE_MAX1MB,
        block_checksum=True,
        content_checksum=True,
        store_size=True,
    )


def compress_pieces(raw: bytes | bytearray | memoryview, level: int = DEFAULT_LEVEL) -> list[bytes]:
    """``raw`` as lz4 frames of ``PIECE`` bytes each (the last may be shorter).

    One call per read buffer, so a pool worker does the whole buffer without
    the GIL most of the time and the caller pays one future, not one a piece.
    """
    view = memoryview(raw)
    return [compress_chunk(view[pos : pos + PIECE], level) for pos in range(0, len(view), PIECE)]


def compress_and_digest(
    raw: bytes | bytearray | memoryview, level: int = DEFAULT_LEVEL
) -> tuple[list[bytes], bytes]:
    """``compress_pieces``, plus the ``.sums`` digest of each piece (in the same worker)."""
    view = memoryview(raw)
    pieces = [view[pos : pos + PIECE] for pos in range(0, len(view), PIECE)]
    return [compress_chunk(p, level) for p in pieces], b"".join(map(piece_digest, pieces))


def decompress_chunk(frame: bytes, path: str, position: int) -> bytes:
    """Decode one lz4 frame, checking its checksums."""
    try:
        return lz4.frame.decompress(frame)  # type: ignore[no-any-return]
    except RuntimeError as err:
        raise StreamFormatError(path, position, f"corrupt lz4 frame: {err}") from None


def chunk_raw_size(frame_prefix: bytes, path: str, position: int) -> int | None:
    """Uncompressed size stored in an lz4 frame header, or None if absent."""
    try:
        info = lz4.frame.get_frame_info(frame_prefix)
    except RuntimeError as err:
        raise StreamFormatError(path, position, f"bad lz4 frame header: {err}") from None
    size = int(info.get("content_size") or 0)
    return size or None
