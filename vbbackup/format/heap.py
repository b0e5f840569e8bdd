"""Keep freed buffers in the heap while compressing or decoding lz4.

Every lz4 piece, compressed or decoded, is a fresh bytes object of a few
hundred KiB, made in a worker thread. glibc hands blocks that big out with
mmap and gives them back with munmap (or shrinks the thread's heap), so each
piece costs new pages and their page faults: 120,000 faults and a third more
system time per GiB compressed, measured. Raising the mmap and trim
thresholds lets freed pieces be reused instead (see docs/performance.md).
Process-wide; a no-op where mallopt is missing.
"""

from __future__ import annotations

import ctypes
from typing import Final

_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD: Final = 32 * 1024 * 1024  # glibc's maximum on 64-bit
TRIM_THRESHOLD: Final = 128 * 1024 * 1024


def keep_freed_buffers() -> bool:
    """Tell glibc to reuse freed large blocks rather than unmap them; True if it could."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # find_library("c") would run ldconfig
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok: bool = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_ok and trim_ok
