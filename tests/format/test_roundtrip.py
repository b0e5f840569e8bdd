"""Property tests: whatever we write, we read back exactly."""

from __future__ import annotations

import io
import random
import zlib

import hypothesis.strategies as st
from hypothesis import given, settings

from tests.format.streams import Extent, make_meta, write_stream
from vbbackup.format import PayloadReader, StreamWriter, compress_chunk, read_index
from vbbackup.format.compression import MAX_CHUNK, PIECE


@st.composite
def extent_lists(draw: st.DrawFn) -> tuple[int, list[Extent]]:
    size = draw(st.integers(1, 6000))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, size - 1)), max_size=12)) - {size})
    bounds = [0, *cuts, size]
    extents = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        kind = draw(st.sampled_from(["data", "zero", "hole"]))
        if kind == "hole":
            continue
        if kind == "zero":
            extents.append(Extent(lo, hi - lo, None))
        else:
            fill = draw(st.sampled_from(["random", "repeat"]))
            if fill == "random":
                data = random.Random(draw(st.integers(0, 2**32))).randbytes(hi - lo)
            else:
                data = bytes([draw(st.integers(0, 255))]) * (hi - lo)
            extents.append(Extent(lo, hi - lo, data))
    return size, extents


@settings(max_examples=150, deadline=None)
@given(
    spec=extent_lists(),
    compressed=st.sampled_from([False, 1, 2, 9]),
    chunk=st.sampled_from([0, 1, 7, 512]),
)
def test_round_trip(spec, compressed, chunk):
    size, extents = spec
    blob, checksum = write_stream(size, extents, compressed, chunk)
    assert checksum == zlib.adler32(blob)

    index = read_index(io.BytesIO(blob), "mem")
    assert index.meta.virtual_size == size
    assert index.meta.data_size == sum(e.length for e in extents if e.data is not None)
    assert bool(index.compressed) == bool(compressed)
    reader = PayloadReader(io.BytesIO(blob), index)
    assert len(index) == len(extents)
    for i, (frame, ext) in enumerate(zip(index, extents, strict=True)):
        assert (frame.start, frame.length) == (ext.start, ext.length)
        assert frame.kind == ("zero" if ext.data is None else "data")
        if ext.data is None:
            continue
        assert b"".join(reader.iter_chunks(i)) == ext.data
        # arbitrary sub-ranges, across lz4 frame boundaries
        for lo, hi in [(0, ext.length), (ext.length // 3, ext.length), (1, max(1, ext.length - 1))]:
            if lo <= hi:
                assert reader.read(i, lo, hi - lo) == ext.data[lo:hi]


def test_real_file_uses_mmap_and_pread(tmp_path):
    extents = [Extent(0, 4096, b"\x01" * 4096), Extent(4096, 4096, None)]
    blob, _ = write_stream(1 << 20, extents, compressed=2)
    path = tmp_path / "vda.full.data"
    path.write_bytes(blob)
    with open(path, "rb") as f:
        index = read_index(f)
        assert index.name == str(path)
        assert PayloadReader(f, index).read(0, 100, 10) == b"\x01" * 10


def test_compressed_trailer_matches_virtnbdbackup_layout():
    data = bytes(range(256)) * 64
    blob, _ = write_stream(1 << 20, [Extent(0, len(data), data)], compressed=2)
    # ends with: stop header, JSON list of sizes, CRLF, comp header
    comp = blob[-40:]
    assert comp.startswith(b"comp 0000000000000000 ")
    tlen = int(comp[22:38], 16)
    trailer = blob[-40 - 2 - tlen : -42]
    assert trailer.startswith(b"[") and trailer.endswith(b"]")
    assert blob[-42 - tlen - 40 : -42 - tlen] == b"stop 0000000000000000 0000000000000000\r\n"


def test_large_range_is_split_into_pieces_and_a_read_decodes_one():
    import lz4.frame

    data = b"\x00\x01" * (2 * PIECE) + b"\x02" * 10
    blob, _ = write_stream(8 * PIECE, [Extent(0, len(data), data)], compressed=1)
    index = read_index(io.BytesIO(blob))
    assert len(index.frame(0).chunk_sizes) == 5
    reader = PayloadReader(io.BytesIO(blob), index)
    assert [raw for _, raw, _, _ in reader.chunk_layout(0)] == [PIECE] * 4 + [10]
    assert reader.read(0, 4 * PIECE - 2, 6) == b"\x00\x01\x02\x02\x02\x02"
    assert sorted(reader._cache) == [(0, 3), (0, 4)]  # the two pieces read, no others
    assert reader.read(0, PIECE + 4, 4) == b"\x00\x01\x00\x01"
    assert (0, 1) in reader._cache and (0, 0) not in reader._cache
    assert lz4.frame.get_frame_info(blob[index.frame(0).payload_pos :][:32])["block_checksum"]


def test_pieces_of_up_to_32_mib_are_read():
    """virtnbdbackup writes one lz4 frame per request, up to 32 MiB."""
    data = b"\x00\x01" * (MAX_CHUNK // 2) + b"\x02" * 10
    buf = io.BytesIO()
    writer = StreamWriter(buf, make_meta(MAX_CHUNK * 2, [Extent(0, len(data), data)], 1))
    writer.begin_data(0, len(data))
    writer.write_compressed_chunk(compress_chunk(data[:MAX_CHUNK]), MAX_CHUNK)
    writer.write_compressed_chunk(compress_chunk(data[MAX_CHUNK:]), 10)
    writer.end_data()
    writer.finish()
    index = read_index(io.BytesIO(buf.getvalue()))
    reader = PayloadReader(io.BytesIO(buf.getvalue()), index)
    assert [raw for _, raw, _, _ in reader.chunk_layout(0)] == [MAX_CHUNK, 10]
    assert reader.read(0, MAX_CHUNK - 2, 6) == b"\x00\x01\x02\x02\x02\x02"
