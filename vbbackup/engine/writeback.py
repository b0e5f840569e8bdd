"""Stream output that keeps the page cache out of the way, the way nbdcopy writes files.

Writing gigabytes through the page cache makes the kernel throttle the writer
once dirty pages pile up (and evicts everything else). Instead, every piece
written is handed to write-back at once (``sync_file_range(WRITE)``), and a
piece a window behind is waited for and dropped from the cache::

    file  |==evicted==|--waited+dropped--|---writing back---|<- write here
                       pos - WINDOW                          pos

The final fsync of ``atomic_output`` then has almost nothing left to do.
"""

from __future__ import annotations

import ctypes
import os
from typing import BinaryIO

STEP = 8 * 1024 * 1024
WINDOW = 64 * 1024 * 1024
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def _load_sync_file_range():  # type: ignore[no-untyped-def]
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # find_library("c") would run ldconfig
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return func


_sync_file_range = _load_sync_file_range()


class WritebackFile:
    """Wraps a buffered binary file; only ``write`` is needed by StreamWriter."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._fd = f.fileno()
        self._pos = f.tell()
        self._started = self._pos  # write-back started up to here
        self._dropped = self._pos  # waited for and evicted up to here

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = self._f.write(data)
        self._pos += n
        if _sync_file_range is not None and self._pos - self._started >= STEP:
            self._f.flush()
            _sync_file_range(self._fd, self._started, self._pos - self._started, _WRITE)
            self._started = self._pos
            if self._started - self._dropped > WINDOW:
                end = self._started - WINDOW
                length = end - self._dropped
                _sync_file_range(
                    self._fd, self._dropped, length, _WAIT_BEFORE | _WRITE | _WAIT_AFTER
                )
                os.posix_fadvise(self._fd, self._dropped, length, os.POSIX_FADV_DONTNEED)
                self._dropped = end
        return n
