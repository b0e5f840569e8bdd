"""NBD client side of a backup: extent maps and pipelined reads over libnbd."""

from vbbackup.nbdio.buffers import BufferPool
from vbbackup.nbdio.extents import Extent, changed_extents, data_size, merge_extents, pieces
from vbbackup.nbdio.reader import NbdReader

__all__ = [
    "BufferPool",
    "Extent",
    "NbdReader",
    "changed_extents",
    "data_size",
    "merge_extents",
    "pieces",
]
