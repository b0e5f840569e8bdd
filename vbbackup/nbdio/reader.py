"""A libnbd client for one export of a pull-mode backup job.

Reads are pipelined like nbdcopy's: several ``aio_pread`` requests are in
flight at once and completed in submission order, so the caller sees the
disk's bytes in order while the server is already working on the next ones.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import nbd

from vbbackup.errors import NbdError
from vbbackup.nbdio.buffers import BufferPool
from vbbackup.nbdio.extents import Extent, merge_extents

BASE_ALLOCATION = "base:allocation"
DIRTY_FLAG = 1  # qemu:dirty-bitmap:* contexts: the range changed
# Block status is asked for in pieces: the protocol's count is 32 bits, and a
# bounded piece keeps each reply's extent list small.
STATUS_PIECE = 1024 * 1024 * 1024
DEFAULT_REQUEST = 4 * 1024 * 1024
DEFAULT_IN_FLIGHT = 4


class NbdReader:
    """Read-only connection to an export, with its allocation and dirty-bitmap maps.

    Connect either to a unix socket (``socket`` + ``export``) or to a server
    command (``command``, nbdkit ``-s``: used by the tests).
    """

    def __init__(
        self,
        *,
        socket: Path | str | None = None,
        tcp: tuple[str, int] | None = None,
        tls_dir: str | None = None,
        export: str = "",
        command: Sequence[str] | None = None,
        bitmap: str | None = None,
        request_size: int = DEFAULT_REQUEST,
        in_flight: int = DEFAULT_IN_FLIGHT,
    ) -> None:
        if [socket, tcp, command].count(None) != 2:
            raise ValueError("give one of socket, tcp or command")
        self._socket = str(socket) if socket is not None else None
        self._tcp = tcp
        self._tls_dir = tls_dir  # ca-cert.pem, client-cert.pem, client-key.pem
        self._command = list(command) if command is not None else None
        self.export = export
        self.bitmap = bitmap
        self._want_request = request_size
        self.in_flight = max(1, in_flight)
        self._h: nbd.NBD | None = None
        self.size = 0
        self.request_size = request_size

    def __enter__(self) -> NbdReader:
        self.open()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def where(self) -> str:
        if self._socket is not None:
            return f"export {self.export!r} at {self._socket}"
        if self._tcp is not None:
            return f"export {self.export!r} at {self._tcp[0]}:{self._tcp[1]}"
        return f"server command {' '.join(self._command or [])!r}"

    def open(self) -> None:
        h = nbd.NBD()
        try:
            h.add_meta_context(BASE_ALLOCATION)
            if self.bitmap:
                h.add_meta_context(self.bitmap)
            h.set_export_name(self.export)
            if self._tls_dir is not None:
                h.set_tls(nbd.TLS_REQUIRE)
                h.set_tls_certificates(self._tls_dir)
            if self._socket is not None:
                h.connect_unix(self._socket)
            elif self._tcp is not None:
                h.connect_tcp(self._tcp[0], str(self._tcp[1]))
            else:
                h.connect_command(self._command)
            self.size = h.get_size()
            for context in (BASE_ALLOCATION, self.bitmap):
                if context and not h.can_meta_context(context):
                    raise NbdError(f"NBD {self.where} does not offer the context {context}")
            maximum = h.get_block_size(nbd.SIZE_MAXIMUM) or self._want_request
            self.request_size = max(4096, min(self._want_request, maximum))
        except nbd.Error as err:
            raise NbdError(f"cannot connect to NBD {self.where}: {err.string}") from None
        self._h = h

    def close(self) -> None:
        h, self._h = self._h, None
        if h is not None:
            with contextlib.suppress(nbd.Error):
                h.shutdown()
            del h

    @property
    def handle(self) -> nbd.NBD:
        if self._h is None:
            raise NbdError(f"NBD {self.where} is not connected")
        return self._h

    def extents(self) -> tuple[list[Extent], list[tuple[int, int]]]:
        """Walk the disk: (allocation extents, dirty ranges or [] without a bitmap)."""
        h = self.handle
        allocation: list[Extent] = []
        dirty: list[tuple[int, int]] = []
        offset = 0
        while offset < self.size:
            count = min(STATUS_PIECE, self.size - offset)
            replies: dict[str, list[tuple[int, int, int]]] = {}

            def collect(
                context: str, start: int, entries: list[int], err: int, _r: dict = replies
            ) -> int:
                pos = start
                out = _r.setdefault(context, [])
                for i in range(0, len(entries) - 1, 2):
                    out.append((pos, entries[i], entries[i + 1]))
                    pos += entries[i]
                return 0

            try:
                h.block_status(count, offset, collect)
            except nbd.Error as err:
                raise NbdError(f"block status of NBD {self.where}: {err.string}") from None
            wanted = [BASE_ALLOCATION] + ([self.bitmap] if self.bitmap else [])
            ends = []
            for context in wanted:
                got = replies.get(context)
                if not got:
                    raise NbdError(f"NBD {self.where} sent no {context} status at {offset}")
                ends.append(got[-1][0] + got[-1][1])
            covered = min(min(ends), offset + count)
            if covered <= offset:
                raise NbdError(f"NBD {self.where}: block status made no progress at {offset}")
            for start, length, flags in replies[BASE_ALLOCATION]:
                length = min(start + length, covered) - start
                if length > 0:
                    allocation.append(Extent(start, length, bool(flags & nbd.STATE_ZERO)))
            if self.bitmap:
                for start, length, flags in replies[self.bitmap]:
                    length = min(start + length, covered) - start
                    if length > 0 and flags & DIRTY_FLAG:
                        if dirty and dirty[-1][0] + dirty[-1][1] == start:
                            dirty[-1] = (dirty[-1][0], dirty[-1][1] + length)
                        else:
                            dirty.append((start, length))
            offset = covered
        return merge_extents(allocation), dirty

    def read_pieces(
        self, pieces: Iterable[tuple[int, int]], pool: BufferPool | None = None
    ) -> Iterator[tuple[int, memoryview]]:
        """Yield ``(offset, bytes)`` for each piece, in order, ``in_flight`` requests ahead.

        Each piece lands in its own buffer from ``pool``, so a consumer may keep it
        (e.g. hand it to a compression thread) while later reads land in others; it
        gives the buffer back with ``pool.put(view)`` when done with it.
        """
        h = self.handle
        if pool is None:
            pool = BufferPool(self.request_size, 0)
        pending: deque[tuple[int, memoryview, nbd.Buffer, int]] = deque()
        todo = iter(pieces)
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.in_flight:
                    piece = next(todo, None)
                    if piece is None:
                        exhausted = True
                        break
                    start, length = piece
                    if length > pool.size:
                        raise ValueError(f"piece of {length} bytes > buffer size {pool.size}")
                    buf = memoryview(pool.get())[:length]
                    shared = nbd.Buffer.from_buffer(buf)
                    pending.append((start, buf, shared, h.aio_pread(shared, start)))
                if not pending:
                    return
                start, buf, _shared, cookie = pending.popleft()
                while not h.aio_command_completed(cookie):
                    h.poll(-1)
                yield start, buf
        except nbd.Error as err:
            raise NbdError(f"read from NBD {self.where} failed: {err.string}") from None
        finally:
            # Requests still in flight write into their buffers: let them land first.
            with contextlib.suppress(nbd.Error):
                while self._h is not None and h.aio_in_flight() > 0:
                    h.poll(-1)
            pending.clear()
