"""Copy one disk from its NBD export into a stream file, in order, with overlap.

Four things run at once: libnbd reads (several requests in flight, polled by a
reader thread), lz4 compression of earlier pieces in worker threads (lz4
releases the GIL), this thread, which builds the frames strictly in disk order
(and the stream's adler32), and the file writes (WritebackFile's thread)::

    NBD  [r5][r6][r7][r8]  ->  lz4 pool (c3)(c4)  ->  frames  ->  file  ...|d1|d2|

Read buffers come from a BufferPool and go back once compressed or written.
The source is anything with ``Source``'s three members (``NbdReader`` over
QEMU's export; tests use nbdkit's data plugin), the sink a ``StreamWriter``.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Protocol

from vbbackup.engine.writeback import DEPTH, WritebackFile
from vbbackup.errors import BackupInterrupted
from vbbackup.format import StreamWriter
from vbbackup.format.compression import compress_and_digest
from vbbackup.format.heap import keep_freed_buffers
from vbbackup.nbdio import BufferPool, Extent, pieces

Progress = Callable[[int], None]
# Pieces read ahead by the NBD thread while this one writes: libnbd only moves
# data while someone polls the handle, so reading needs a thread of its own.
PREFETCH = 2
_END = object()


@dataclass
class _Chunk:
    """One read piece on its way to the file: raw bytes or its lz4 frames to come."""

    raw_length: int
    raw: memoryview | None = None
    frame: Future[tuple[list[bytes], bytes]] | None = None  # lz4 frames, their digests


class Source(Protocol):
    """Where a disk's bytes come from: pieces read with requests in flight."""

    request_size: int
    in_flight: int

    def read_pieces(
        self, pieces: Iterable[tuple[int, int]], buffers: BufferPool
    ) -> Iterator[tuple[int, memoryview]]: ...


def copy_extents(
    reader: Source,
    extents: list[Extent],
    writer: StreamWriter,
    *,
    pool: Executor | None,
    level: int,
    stop: threading.Event,
    progress: Progress,
    max_pending: int = 4,
    out: WritebackFile | None = None,
) -> None:
    """Write ``extents`` (data read from ``reader``, zero as zero frames) through ``writer``.

    ``pool`` compresses when the stream is compressed; at most ``max_pending``
    pieces wait for it, so memory stays at a few request sizes. ``out``: the
    asynchronous file under ``writer``, if any; a raw read buffer goes back to
    its pool only after ``out`` has written it.
    """
    if writer.compressed and pool is not None:
        keep_freed_buffers()
    queue: deque[_Chunk | tuple[str, int, int]] = deque()
    buffers = BufferPool(reader.request_size, reader.in_flight + PREFETCH + max_pending + DEPTH + 3)
    reads = _Prefetch(reader.read_pieces(pieces(extents, reader.request_size), buffers))

    def drain(limit: int) -> None:
        waiting = sum(isinstance(item, _Chunk) for item in queue)
        while queue and (waiting > limit or _ready(queue[0])):
            item = queue.popleft()
            waiting -= isinstance(item, _Chunk)
            _emit(writer, item, progress)
            if isinstance(item, _Chunk):
                if item.frame is None and out is not None:
                    out.call_after(buffers.put, item.raw)
                else:
                    buffers.put(item.raw)

    try:
        for ext in extents:
            if ext.zero:
                queue.append(("zero", ext.start, ext.length))
                drain(max_pending)
                continue
            queue.append(("begin", ext.start, ext.length))
            done = 0
            while done < ext.length:
                if stop.is_set():
                    raise BackupInterrupted("stopped")
                _start, buf = next(reads)
                done += len(buf)
                if writer.compressed and pool is not None:
                    frame = pool.submit(compress_and_digest, buf, level)
                    queue.append(_Chunk(len(buf), raw=buf, frame=frame))
                else:
                    queue.append(_Chunk(len(buf), raw=buf))
                drain(max_pending)
            queue.append(("end", 0, 0))
        drain(0)
    finally:
        reads.close()
        for item in queue:
            if isinstance(item, _Chunk) and item.frame is not None:
                item.frame.cancel()


class _Prefetch:
    """Run an iterator in a thread of its own, ``PREFETCH`` items ahead of the consumer."""

    def __init__(self, source: Iterator[tuple[int, memoryview]]) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(PREFETCH)
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nbd-read", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)
        finally:
            self._source.close()  # type: ignore[attr-defined]

    def _put(self, item: object) -> bool:
        while not self._cancel.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _Prefetch:
        return self

    def __next__(self) -> tuple[int, memoryview]:
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._cancel.set()
        self._thread.join()


def _ready(item: _Chunk | tuple[str, int, int]) -> bool:
    return not isinstance(item, _Chunk) or item.frame is None or item.frame.done()


def _emit(writer: StreamWriter, item: _Chunk | tuple[str, int, int], progress: Progress) -> None:
    if isinstance(item, _Chunk):
        if item.frame is not None:
            raw = item.raw if item.raw is not None else b""
            lz4_frames, digests = item.frame.result()
            writer.write_compressed_pieces(lz4_frames, raw[: item.raw_length], digests)
        else:
            writer.write_chunk(item.raw if item.raw is not None else b"")
        progress(item.raw_length)
        return
    kind, start, length = item
    if kind == "zero":
        writer.write_zero(start, length)
    elif kind == "begin":
        writer.begin_data(start, length)
    else:
        writer.end_data()
