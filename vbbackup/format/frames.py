"""Frame headers of the sparse stream format.

Every frame starts with a 40-byte ASCII header::

    kind SP start(16 hex) SP length(16 hex) CR LF
    data 0000000000100000 0000000000010000\\r\\n
"""

from __future__ import annotations

from typing import Final

from vbbackup.errors import StreamFormatError

HEADER_SIZE: Final = 40
TERM: Final = b"\r\n"

META: Final = b"meta"
DATA: Final = b"data"
ZERO: Final = b"zero"
STOP: Final = b"stop"
COMP: Final = b"comp"
KINDS: Final = frozenset({META, DATA, ZERO, STOP, COMP})

MAX_OFFSET: Final = (1 << 64) - 1


def encode_header(kind: bytes, start: int, length: int) -> bytes:
    """Return the 40-byte header for one frame."""
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    if not (0 <= start <= MAX_OFFSET and 0 <= length <= MAX_OFFSET):
        raise ValueError(f"frame start/length out of range: {start}, {length}")
    return b"%s %016x %016x\r\n" % (kind, start, length)


def decode_header(header: bytes, path: str, position: int) -> tuple[bytes, int, int]:
    """Parse one header; raise StreamFormatError naming the file and byte."""
    if len(header) < HEADER_SIZE:
        raise StreamFormatError(
            path, position, f"truncated frame header ({len(header)} of {HEADER_SIZE} bytes)"
        )
    kind = bytes(header[0:4])
    if header[4:5] != b" " or header[21:22] != b" " or header[38:40] != TERM or kind not in KINDS:
        raise StreamFormatError(path, position, f"bad frame header {bytes(header[:40])!r}")
    try:
        start = int(header[5:21], 16)
        length = int(header[22:38], 16)
    except ValueError:
        raise StreamFormatError(
            path, position, f"bad frame header {bytes(header[:40])!r}"
        ) from None
    return kind, start, length
