"""Every malformed stream raises StreamFormatError naming file and byte."""

from __future__ import annotations

import io
import json

import pytest

from tests.format.streams import Extent, write_stream
from vbbackup.errors import StreamFormatError
from vbbackup.format import PayloadReader, read_index
from vbbackup.format.frames import encode_header

EXTENTS = [
    Extent(0, 4096, bytes(range(256)) * 16),
    Extent(4096, 8192, None),
    Extent(65536, 1000, b"\xab" * 1000),
]


@pytest.fixture(params=[False, 2], ids=["plain", "lz4"])
def blob(request):
    return write_stream(1 << 20, EXTENTS, compressed=request.param)[0]


def parse(data: bytes):
    return read_index(io.BytesIO(data), "vda.full.data")


def test_every_truncation_is_caught(blob):
    for cut in range(len(blob)):
        with pytest.raises(StreamFormatError) as err:
            parse(blob[:cut])
        assert str(err.value).startswith("vda.full.data: at byte ")


def test_trailing_garbage(blob):
    with pytest.raises(StreamFormatError):
        parse(blob + b"x")


def test_empty_file():
    with pytest.raises(StreamFormatError, match="empty file"):
        parse(b"")


def test_not_starting_with_meta():
    with pytest.raises(StreamFormatError, match="does not start with a meta frame"):
        parse(encode_header(b"data", 0, 1) + b"x\r\n")


def test_bad_meta_json():
    payload = b"{not json"
    data = encode_header(b"meta", 0, len(payload)) + payload + b"\r\n"
    with pytest.raises(StreamFormatError, match="at byte 40: bad meta JSON"):
        parse(data)


def test_meta_without_sizes():
    payload = json.dumps({"date": "x"}).encode()
    data = encode_header(b"meta", 0, len(payload)) + payload + b"\r\n"
    with pytest.raises(StreamFormatError, match="bad meta JSON"):
        parse(data)


def _frames_part(blob: bytes) -> tuple[bytes, bytes]:
    meta_len = int(blob[22:38], 16)
    head = 40 + meta_len + 2
    return blob[:head], blob[head:]


def test_frame_beyond_virtual_size():
    blob, _ = write_stream(1 << 20, [], False)
    head, rest = _frames_part(blob)
    bad = head + encode_header(b"zero", 1 << 20, 4096) + rest
    with pytest.raises(StreamFormatError, match=r"outside the disk"):
        parse(bad)


def test_data_length_overruns_file():
    blob, _ = write_stream(1 << 20, [], False)
    head, rest = _frames_part(blob)
    bad = head + encode_header(b"data", 0, 1 << 19) + b"abc\r\n" + rest
    with pytest.raises(StreamFormatError, match="overruns the file"):
        parse(bad)


def test_bad_header_in_the_middle(blob):
    head, rest = _frames_part(blob)
    bad = head + b"dat4" + rest[4:]
    with pytest.raises(StreamFormatError, match=f"at byte {len(head)}: bad frame header"):
        parse(bad)


def test_compressed_stream_missing_trailer():
    blob, _ = write_stream(1 << 20, EXTENTS, compressed=2)
    stop = blob.rindex(b"stop ")
    with pytest.raises(StreamFormatError, match="comp trailer"):
        parse(blob[: stop + 40])


def test_trailer_with_wrong_number_of_entries():
    blob, _ = write_stream(1 << 20, EXTENTS, compressed=2)
    tlen = int(blob[-40:][22:38], 16)
    trailer = json.loads(blob[-42 - tlen : -42])
    new = json.dumps(trailer[:-1]).encode()
    bad = blob[: -42 - tlen] + new + b"\r\n" + encode_header(b"comp", 0, len(new))
    with pytest.raises(StreamFormatError):
        parse(bad)


def test_flipped_byte_in_lz4_payload_is_caught():
    blob, _ = write_stream(1 << 20, EXTENTS, compressed=2)
    index = parse(blob)
    frame = index.frame(0)
    pos = frame.payload_pos + frame.payload_size // 2
    bad = bytearray(blob)
    bad[pos] ^= 0xFF
    reader = PayloadReader(io.BytesIO(bytes(bad)), parse(bytes(bad)))
    with pytest.raises(StreamFormatError, match="corrupt lz4 frame"):
        reader.read(0, 0, 4096)


def test_payload_read_past_end_of_file(tmp_path):
    blob, _ = write_stream(1 << 20, EXTENTS, compressed=False)
    path = tmp_path / "s.data"
    path.write_bytes(blob)
    with open(path, "rb") as f:
        index = read_index(f)
        path.write_bytes(blob[:100])  # truncated after indexing
        with pytest.raises(StreamFormatError, match="file ends early"):
            PayloadReader(f, index).read(0, 0, 4096)


def test_lz4_frame_shorter_than_its_data_header():
    """A data header whose length disagrees with its lz4 frame's content."""
    blob, _ = write_stream(1 << 20, EXTENTS, compressed=2)
    index = parse(blob)
    pos = index.frame(0).pos
    bad = blob[:pos] + encode_header(b"data", 0, 4095) + blob[pos + 40 :]
    reader = PayloadReader(io.BytesIO(bad), parse(bad))
    with pytest.raises(StreamFormatError, match="lz4 frame decodes to 4096 bytes, not 4095"):
        reader.read(0, 0, 100)
    with pytest.raises(StreamFormatError, match="decode to 4096 bytes, frame header says 4095"):
        b"".join(reader.iter_chunks(0))
