"""The ``.sums`` side file: digests independent of chunking, its own check, the checker."""

from __future__ import annotations

import io

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from vbbackup.errors import StreamFormatError
from vbbackup.format import StreamMeta, StreamWriter, read_index
from vbbackup.format.payload import PayloadReader
from vbbackup.format.sums import DataChecksumError, PieceHasher, Sums

P = 64  # small pieces: many boundaries in little data


def _meta(size: int, compressed: bool) -> StreamMeta:
    return StreamMeta(
        virtual_size=size, data_size=0, date="2026-12-01T00:00:00", disk_name="vda",
        disk_format="qcow2", checkpoint_name="vbbackup.00000000.0", parent_checkpoint=None,
        incremental=False, compressed=2 if compressed else False,
    )  # fmt: skip


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=12))
def test_digests_do_not_depend_on_how_a_unit_is_fed(chunks: list[bytes]) -> None:
    whole = b"".join(chunks)
    fed = PieceHasher(P)
    fed.start_unit()
    for chunk in chunks:
        fed.update(chunk)
    fed.end_unit()
    expected = b"".join(xxhash.xxh3_128_digest(whole[i : i + P]) for i in range(0, len(whole), P))
    assert bytes(fed.digests) == expected


def test_round_trip_and_its_own_check() -> None:
    sums = Sums("vda.full.data", b"L" * 16, b"D" * 48, piece_size=4096)
    raw = sums.to_bytes()
    assert Sums.from_bytes(raw, "x.sums") == sums
    for position in range(len(raw)):
        damaged = bytearray(raw)
        damaged[position] ^= 0x04
        with pytest.raises(StreamFormatError, match=r"x\.sums: at byte \d+: "):
            Sums.from_bytes(bytes(damaged), "x.sums")
    with pytest.raises(StreamFormatError, match="not a vbbackup checksum file"):
        Sums.from_bytes(b"garbage", "x.sums")


def _stream(compressed: bool, data: bytes) -> tuple[bytes, Sums]:
    buf = io.BytesIO()
    w = StreamWriter(buf, _meta(4 * len(data), compressed))
    w.write_zero(0, len(data))
    w.write_data(len(data), data)
    w.finish()
    return buf.getvalue(), w.sums("vda.full.data")


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=1, max_size=70000), st.booleans(), st.data())
def test_a_flipped_payload_byte_is_found(
    data: bytes, compressed: bool, pick: st.DataObject
) -> None:
    raw, sums = _stream(compressed, data)
    index = read_index(io.BytesIO(raw), "vda.full.data")
    reader = PayloadReader(io.BytesIO(raw), index)
    checker = reader.checker(sums, "vda.full.data.sums")
    assert reader.damaged_pieces(checker, 10) == []
    frame = index.frame(1)
    position = pick.draw(st.integers(frame.payload_pos, frame.payload_pos + frame.payload_size - 1))
    damaged = bytearray(raw)
    damaged[position] ^= 0x80
    reader = PayloadReader(io.BytesIO(bytes(damaged)), index)
    found = reader.damaged_pieces(checker, 10)
    assert len(found) == 1
    assert found[0].path == "vda.full.data"


def test_layout_mismatch_is_refused_at_open() -> None:
    raw, sums = _stream(False, b"x" * 1000)
    moved = raw.replace(b"data 00000000000003e8", b"data 00000000000003f0")  # start 1000 -> 1008
    index = read_index(io.BytesIO(moved), "vda.full.data")
    with pytest.raises(DataChecksumError, match="frame layout does not match vda.full.data.sums"):
        PayloadReader(io.BytesIO(moved), index).checker(sums, "vda.full.data.sums")
