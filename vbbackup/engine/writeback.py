"""Stream output written by a thread of its own, keeping the page cache out of the way.

Two things, both about the single-disk full backup being as fast as nbdcopy:

- The write syscalls run in a writer thread, so they overlap with the stream
  writer's checksum and with the NBD reads (``write`` only queues the bytes).
  A buffer handed to ``write`` must stay untouched until ``call_after`` runs
  the callback queued behind it (that is how read buffers go back to their pool).
- As nbdcopy does for files, every piece written is handed to write-back at
  once (``sync_file_range(WRITE)``), and a piece a window behind is waited for
  and dropped from the cache, so the kernel never throttles a pile of dirty
  pages and the final fsync has almost nothing left to do::

    file  |==evicted==|--waited+dropped--|---writing back---|<- write here
                       pos - WINDOW                          pos
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, BinaryIO

STEP = 8 * 1024 * 1024
WINDOW = 64 * 1024 * 1024
SMALL = 64 * 1024  # writes below this are gathered, not queued one by one
DEPTH = 4  # queued writes (each at most a request size, or gathered small ones)
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
_STOP = object()


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
    """``with WritebackFile(f) as out:`` — ``out.write`` queues, the thread writes to ``f``.

    Leaving the block waits for every queued write and raises the first error the
    writer thread met (ENOSPC, EIO) as the OSError it was.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._fd = f.fileno()
        self._pos = f.tell()
        self._started = self._pos  # write-back started up to here
        self._dropped = self._pos  # waited for and evicted up to here
        self._small = bytearray()
        self._queue: queue.Queue[Any] = queue.Queue(DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="file-write", daemon=True)
        self._thread.start()

    def __enter__(self) -> WritebackFile:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(raise_error=typ is None)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check()
        n = len(data)
        if n < SMALL:
            self._small += data
            if len(self._small) >= SMALL:
                self._flush_small()
        else:
            self._flush_small()
            self._queue.put(data)
        return n

    def call_after(self, func: Callable[[Any], None], arg: Any) -> None:
        """Run ``func(arg)`` in the writer thread once everything written so far is written."""
        self._flush_small()
        self._queue.put((func, arg))

    def close(self, *, raise_error: bool = True) -> None:
        if self._thread.is_alive():
            self._flush_small()
            self._queue.put(_STOP)
            self._thread.join()
        if raise_error:
            self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _flush_small(self) -> None:
        if self._small:
            self._queue.put(bytes(self._small))
            self._small = bytearray()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            if isinstance(item, tuple):
                func, arg = item
                func(arg)
            elif self._error is None:
                try:
                    self._write_now(item)
                except BaseException as err:  # raised in the caller's thread
                    self._error = err

    def _write_now(self, data: bytes | bytearray | memoryview) -> None:
        self._pos += self._f.write(data)
        if _sync_file_range is None or self._pos - self._started < STEP:
            return
        self._f.flush()
        _sync_file_range(self._fd, self._started, self._pos - self._started, _WRITE)
        self._started = self._pos
        if self._started - self._dropped > WINDOW:
            end = self._started - WINDOW
            length = end - self._dropped
            _sync_file_range(self._fd, self._dropped, length, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
            with contextlib.suppress(OSError):  # only advice: some file systems refuse it
                os.posix_fadvise(self._fd, self._dropped, length, os.POSIX_FADV_DONTNEED)
            self._dropped = end
