"""Helpers for format tests: build streams in memory from extent lists."""

from __future__ import annotations

import io
from dataclasses import dataclass

from vbbackup.format import StreamMeta, StreamWriter


@dataclass(frozen=True)
class Extent:
    start: int
    length: int
    data: bytes | None  # None: a zero frame


def make_meta(size: int, extents: list[Extent], compressed: int | bool = False) -> StreamMeta:
    return StreamMeta(
        virtual_size=size,
        data_size=sum(e.length for e in extents if e.data is not None),
        date="2026-11-26T07:00:00",
        disk_name="vda",
        disk_format="qcow2",
        checkpoint_name="virtnbdbackup.0",
        parent_checkpoint=None,
        incremental=False,
        compressed=compressed,
    )


def write_stream(
    size: int, extents: list[Extent], compressed: int | bool = False, chunk: int = 0
) -> tuple[bytes, int]:
    """Return (stream bytes, checksum the writer computed)."""
    buf = io.BytesIO()
    writer = StreamWriter(buf, make_meta(size, extents, compressed))
    for ext in extents:
        if ext.data is None:
            writer.write_zero(ext.start, ext.length)
            continue
        writer.begin_data(ext.start, ext.length)
        step = chunk or ext.length
        for pos in range(0, ext.length, step):
            writer.write_chunk(ext.data[pos : pos + step])
        writer.end_data()
    writer.finish()
    return buf.getvalue(), writer.checksum
