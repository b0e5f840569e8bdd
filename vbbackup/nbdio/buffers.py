"""Read buffers that are reused instead of reallocated.

A fresh 8-32 MiB ``bytearray`` per request makes glibc grow the heap (its mmap
threshold rises after the first frees), so RSS climbs far above what is in
use; recycling a handful of buffers keeps memory at a few request sizes.
"""

from __future__ import annotations

import threading


class BufferPool:
    """Buffers of one size: ``get`` a free one (or a new one), ``put`` it back when done."""

    def __init__(self, size: int, keep: int) -> None:
        self.size = size
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def get(self) -> bytearray:
        with self._lock:
            if self._free:
                return self._free.pop()
        return bytearray(self.size)

    def put(self, buf: object) -> None:
        """Give back a buffer (or a memoryview of one) once its bytes are consumed."""
        if isinstance(buf, memoryview):
            buf = buf.obj
        if not isinstance(buf, bytearray) or len(buf) != self.size:
            return
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)
