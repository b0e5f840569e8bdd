"""Index of a stream file: every frame's place, read from headers alone.

Opening a stream never reads data payloads: an uncompressed frame's length
says where the next header is, a compressed stream's trailer gives the
compressed sizes. The index is columnar (arrays, not an object per frame)
so a chain of a million extents stays small.
"""

from __future__ import annotations

import io
import json
import os
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from vbbackup.errors import StreamFormatError
from vbbackup.format import frames
from vbbackup.format.meta import StreamMeta
from vbbackup.format.sums import layout_digest

KIND_ZERO: Final = 0
KIND_DATA: Final = 1
_KIND_NAMES: Final = ("zero", "data")

_MAX_META: Final = 1 << 20
_MAX_TRAILER: Final = 1 << 34


@dataclass(frozen=True)
class Frame:
    """One data or zero frame.

    ``pos`` is the header's file position, ``payload_pos``/``payload_size``
    the payload's place on disk (compressed size for compressed streams),
    ``chunk_sizes`` the compressed size of each lz4 frame of the payload.
    """

    kind: str
    start: int
    length: int
    pos: int
    payload_pos: int
    payload_size: int
    chunk_sizes: tuple[int, ...] = ()

    @property
    def end(self) -> int:
        return self.start + self.length


class StreamIndex:
    """Frames of one stream in file order, as parallel arrays."""

    def __init__(self, name: str, meta: StreamMeta, file_size: int, meta_json: bytes = b"") -> None:
        self.name = name
        self.meta = meta
        self.meta_json = meta_json
        self.file_size = file_size
        self.kinds = bytearray()
        self.starts = array("Q")
        self.lengths = array("Q")
        self.positions = array("Q")
        self.payload_pos = array("Q")
        self.payload_size = array("Q")
        # frame number -> compressed sizes of its lz4 frames, for the data
        # frames of more than one (a compressed stream holds thousands of
        # single ones: no entry each)
        self.chunk_sizes: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def compressed(self) -> bool:
        return self.meta.is_compressed

    def frame(self, i: int) -> Frame:
        return Frame(
            kind=_KIND_NAMES[self.kinds[i]],
            start=self.starts[i],
            length=self.lengths[i],
            pos=self.positions[i],
            payload_pos=self.payload_pos[i],
            payload_size=self.payload_size[i],
            chunk_sizes=self.chunks(i),
        )

    def chunks(self, i: int) -> tuple[int, ...]:
        """Compressed sizes of frame i's lz4 frames (empty if it has none)."""
        sizes = self.chunk_sizes.get(i)
        if sizes is not None:
            return sizes
        if self.compressed and self.kinds[i] == KIND_DATA:
            return (self.payload_size[i],)
        return ()

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self.frame(i)

    def layout_digest(self) -> bytes:
        """What a ``.sums`` file records of this stream's headers (see ``format.sums``)."""
        return layout_digest(
            self.meta_json, self.kinds, self.starts, self.lengths, self.payload_size,
            self.chunk_sizes,
        )  # fmt: skip

    @property
    def data_size(self) -> int:
        """Sum of data frame lengths actually present."""
        return sum(n for n, k in zip(self.lengths, self.kinds, strict=True) if k == KIND_DATA)


def _file_name(fileobj: BinaryIO, name: str | None) -> str:
    if name is not None:
        return name
    return str(getattr(fileobj, "name", "<stream>"))


PreadFn = Callable[[int, int], bytes]

# Headers are read through a window of this size: small frames cost one read
# per window, big frames one read each, and memory stays bounded.
_WINDOW: Final = 256 * 1024


def _pread_fn(fileobj: BinaryIO) -> tuple[PreadFn, int]:
    """A positional read function over the file, and the file's size."""
    try:
        fd = fileobj.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        fileobj.seek(0)
        data = fileobj.read()
        return (lambda n, pos: data[pos : pos + n]), len(data)
    return (lambda n, pos: os.pread(fd, n, pos)), os.fstat(fd).st_size


def read_index(fileobj: BinaryIO, name: str | None = None) -> StreamIndex:
    """Parse headers (and the trailer) of a stream; validate as we go."""
    path = _file_name(fileobj, name)
    pread, size = _pread_fn(fileobj)
    return _parse(pread, size, path)


def _parse(pread: PreadFn, size: int, path: str) -> StreamIndex:
    hs = frames.HEADER_SIZE
    if size == 0:
        raise StreamFormatError(path, 0, "empty file, not a stream")
    kind, _, meta_len = frames.decode_header(pread(hs, 0), path, 0)
    if kind != frames.META:
        raise StreamFormatError(path, 0, f"stream does not start with a meta frame ({kind!r})")
    if meta_len > _MAX_META or hs + meta_len + 2 > size:
        raise StreamFormatError(path, 0, f"meta frame length {meta_len} overruns the file")
    raw_meta = pread(meta_len + 2, hs)
    try:
        meta_obj = json.loads(raw_meta[:meta_len].decode("utf-8"))
        if not isinstance(meta_obj, dict):
            raise ValueError("not a JSON object")
        meta = StreamMeta.from_dict(meta_obj)
    except (ValueError, KeyError, TypeError) as err:
        raise StreamFormatError(path, hs, f"bad meta JSON: {err}") from None
    pos = hs + meta_len
    if raw_meta[meta_len:] != frames.TERM:
        raise StreamFormatError(path, pos, "meta JSON not followed by CRLF")
    pos += 2

    index = StreamIndex(path, meta, size, bytes(raw_meta[:meta_len]))
    trailer: list[int | dict[str, list[int]]] | None = None
    end = size  # where the stop frame's stream must end
    if meta.is_compressed:
        trailer, end = _read_trailer(pread, size, path)

    vsize = meta.virtual_size
    kinds, starts, lengths = index.kinds, index.starts, index.lengths
    positions, ppos, psize = index.positions, index.payload_pos, index.payload_size
    n_data = 0
    win, wstart, wend = b"", 0, 0
    data_kind, zero_kind, stop_kind = frames.DATA, frames.ZERO, frames.STOP
    while True:
        if pos + hs > end:
            raise StreamFormatError(
                path, pos, "truncated stream: no stop frame (file ends inside the frame list)"
            )
        if pos < wstart or pos + hs + 2 > wend:
            win = pread(_WINDOW, pos)
            wstart, wend = pos, pos + len(win)
        o = pos - wstart
        header = win[o : o + hs]
        kind = header[:4]
        try:
            if header[38:40] != b"\r\n" or header[4:5] != b" " or header[21:22] != b" ":
                raise ValueError
            start = int(header[5:21], 16)
            length = int(header[22:38], 16)
        except ValueError:
            frames.decode_header(header, path, pos)  # raises with the details
            raise
        body = pos + hs
        if kind == data_kind:
            code = KIND_DATA
            if trailer is not None:
                if n_data >= len(trailer):
                    raise StreamFormatError(
                        path, pos, "more data frames than the compression trailer lists"
                    )
                chunks = _trailer_entry(trailer[n_data], path, pos)
                if len(chunks) > 1:  # one lz4 frame: its size is the payload size
                    index.chunk_sizes[len(kinds)] = chunks
                payload = sum(chunks)
            else:
                payload = length
            n_data += 1
            if body + payload + 2 > end:
                raise StreamFormatError(
                    path, pos, f"data frame of {payload} bytes overruns the file (ends at {end})"
                )
            t = body + payload
            term = win[t - wstart : t - wstart + 2] if t + 2 <= wend else pread(2, t)
            if term != frames.TERM:
                raise StreamFormatError(path, t, "data payload not followed by CRLF")
            nxt = t + 2
        elif kind == zero_kind:
            code = KIND_ZERO
            payload = 0
            nxt = body
        elif kind == stop_kind:
            pos = body
            break
        else:
            frames.decode_header(header, path, pos)  # unknown kind: raises
            raise StreamFormatError(path, pos, f"unexpected {kind.decode()} frame")
        if length == 0 or start + length > vsize:
            raise StreamFormatError(
                path,
                pos,
                f"{kind.decode()} frame [{start}, +{length}) outside the disk ({vsize} bytes)",
            )
        kinds.append(code)
        starts.append(start)
        lengths.append(length)
        positions.append(pos)
        ppos.append(body)
        psize.append(payload)
        pos = nxt
    if trailer is not None and n_data != len(trailer):
        raise StreamFormatError(
            path, pos, f"compression trailer lists {len(trailer)} data frames, stream has {n_data}"
        )
    if pos != end:
        raise StreamFormatError(path, pos, f"{end - pos} unexpected bytes after the stop frame")
    return index


def _read_trailer(
    pread: PreadFn, size: int, path: str
) -> tuple[list[int | dict[str, list[int]]], int]:
    """Return the trailer entries and where the stop frame must end."""
    hs = frames.HEADER_SIZE
    comp_pos = size - hs
    if comp_pos < hs:
        raise StreamFormatError(path, size, "compressed stream without trailer")
    kind, _, tlen = frames.decode_header(pread(hs, comp_pos), path, comp_pos)
    if kind != frames.COMP:
        raise StreamFormatError(
            path, comp_pos, "compressed stream does not end with a comp trailer (truncated?)"
        )
    json_pos = comp_pos - 2 - tlen
    if tlen > _MAX_TRAILER or json_pos < hs:
        raise StreamFormatError(path, comp_pos, f"trailer length {tlen} overruns the file")
    raw = pread(tlen + 2, json_pos)
    if raw[tlen:] != frames.TERM:
        raise StreamFormatError(path, comp_pos - 2, "trailer JSON not followed by CRLF")
    try:
        trailer = json.loads(raw[:tlen].decode("ascii"))
    except (ValueError, UnicodeDecodeError) as err:
        raise StreamFormatError(path, json_pos, f"bad trailer JSON: {err}") from None
    if not isinstance(trailer, list):
        raise StreamFormatError(path, json_pos, "trailer JSON is not a list")
    return trailer, json_pos


def _trailer_entry(entry: object, path: str, pos: int) -> tuple[int, ...]:
    if isinstance(entry, int) and not isinstance(entry, bool) and entry > 0:
        return (entry,)
    if isinstance(entry, dict) and len(entry) == 1:
        ((_total, sizes),) = entry.items()
        if (
            isinstance(sizes, list)
            and sizes
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes)
        ):
            return tuple(sizes)
    raise StreamFormatError(path, pos, f"bad compression trailer entry {entry!r}")
