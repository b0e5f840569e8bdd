"""The sparse stream format (``*.data`` files), pure and I/O-free.

Interchangeable with virtnbdbackup's; specified in ``docs/format.md``.
"""

from vbbackup.errors import StreamFormatError
from vbbackup.format.compression import (
    MAX_CHUNK,
    PIECE,
    compress_chunk,
    compress_pieces,
    decompress_chunk,
)
from vbbackup.format.frames import HEADER_SIZE
from vbbackup.format.index import KIND_DATA, KIND_ZERO, Frame, StreamIndex, read_index
from vbbackup.format.meta import StreamMeta
from vbbackup.format.payload import PayloadReader
from vbbackup.format.writer import StreamWriter

__all__ = [
    "HEADER_SIZE",
    "KIND_DATA",
    "KIND_ZERO",
    "MAX_CHUNK",
    "PIECE",
    "Frame",
    "PayloadReader",
    "StreamFormatError",
    "StreamIndex",
    "StreamMeta",
    "StreamWriter",
    "compress_chunk",
    "compress_pieces",
    "decompress_chunk",
    "read_index",
]
