"""Property tests: whatever we write, we read back exactly."""

from __future__ import annotations

import io
import json
import random
import zlib

import hypothesis.strategies as st
from hypothesis import given, settings

from tests.format.streams import Extent, make_meta, write_stream
from vbbackup.format import PayloadReader, compress_chunk, read_index
from vbbackup.format.compression import PIECE
from vbbackup.format.frames import encode_header


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
    if not compressed:
        assert len(index) == len(extents)
    # compressed: an extent's data is one data frame per lz4 piece
    frames = iter(enumerate(index))
    for ext in extents:
        pos, parts = ext.start, []
        while pos < ext.start + ext.length:
            i, frame = next(frames)
            assert frame.start == pos
            assert frame.kind == ("zero" if ext.data is None else "data")
            pos = frame.end
            if ext.data is None:
                continue
            parts.append(b"".join(reader.iter_chunks(i)))
            # arbitrary sub-ranges
            n = frame.length
            for lo, hi in [(0, n), (n // 3, n), (1, max(1, n - 1))]:
                if lo <= hi:
                    got = reader.read(i, lo, hi - lo)
                    assert got == ext.data[frame.start - ext.start + lo :][: hi - lo]
        assert pos == ext.start + ext.length
        if ext.data is not None:
            assert b"".join(parts) == ext.data
    assert next(frames, None) is None


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


def test_compressed_range_is_one_data_frame_per_piece():
    """virtnbdrestore reads a data frame under 32 MiB as a single lz4 frame."""
    data = b"\x00\x01" * (2 * PIECE) + b"\x02" * 10
    blob, _ = write_stream(8 * PIECE, [Extent(0, len(data), data)], compressed=1)
    index = read_index(io.BytesIO(blob))
    assert [(f.start, f.length, len(f.chunk_sizes)) for f in index] == [
        (0, PIECE, 1),
        (PIECE, PIECE, 1),
        (2 * PIECE, PIECE, 1),
        (3 * PIECE, PIECE, 1),
        (4 * PIECE, 10, 1),
    ]
    trailer = blob[blob.rindex(b"\r\n[") + 2 : -42]
    assert trailer == json.dumps([f.payload_size for f in index]).encode()


def test_virtnbdbackup_split_frame_decodes_only_the_pieces_read():
    """virtnbdbackup splits a data frame of 32 MiB or more into lz4 frames (a dict entry)."""
    pieces = [b"\x00\x01" * (PIECE // 2), b"\x02" * PIECE, b"\x03" * 10]
    lz4s = [compress_chunk(p) for p in pieces]
    length = sum(map(len, pieces))
    meta = make_meta(4 * PIECE, [Extent(0, length, b"")], 2).to_json()
    trailer = json.dumps([{str(sum(map(len, lz4s))): [len(f) for f in lz4s]}]).encode()
    blob = b"".join([
        encode_header(b"meta", 0, len(meta)), meta, b"\r\n",
        encode_header(b"data", 0, length), *lz4s, b"\r\n",
        encode_header(b"stop", 0, 0), trailer, b"\r\n", encode_header(b"comp", 0, len(trailer)),
    ])  # fmt: skip
    index = read_index(io.BytesIO(blob))
    reader = PayloadReader(io.BytesIO(blob), index)
    assert [raw for _, raw, _, _ in reader.chunk_layout(0)] == [PIECE, PIECE, 10]
    assert reader.read(0, 2 * PIECE - 2, 6) == b"\x02\x02\x03\x03\x03\x03"
    assert sorted(reader._cache) == [(0, 1), (0, 2)]  # the two pieces read, no others
    assert reader.read(0, 4, 4) == b"\x00\x01\x00\x01"
    assert sorted(reader._cache) == [(0, 0), (0, 1), (0, 2)]
