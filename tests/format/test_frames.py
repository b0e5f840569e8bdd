import pytest

from vbbackup.errors import StreamFormatError
from vbbackup.format import frames


def test_header_is_40_bytes_lowercase_hex():
    header = frames.encode_header(frames.DATA, 0x100000, 0xABC)
    assert header == b"data 0000000000100000 0000000000000abc\r\n"
    assert len(header) == frames.HEADER_SIZE


def test_decode_round_trip():
    header = frames.encode_header(frames.ZERO, 12345, 678)
    assert frames.decode_header(header, "f", 0) == (b"zero", 12345, 678)


@pytest.mark.parametrize(
    "header",
    [
        b"date 0000000000000000 0000000000000000\r\n",
        b"data 000000000000000g 0000000000000000\r\n",
        b"data_0000000000000000 0000000000000000\r\n",
        b"data 0000000000000000 0000000000000000\n\n",
    ],
)
def test_bad_header_names_file_and_position(header):
    with pytest.raises(StreamFormatError) as err:
        frames.decode_header(header, "vda.full.data", 4711)
    assert str(err.value).startswith("vda.full.data: at byte 4711: bad frame header")


def test_short_header():
    with pytest.raises(StreamFormatError, match="truncated frame header"):
        frames.decode_header(b"data 00", "x", 0)
