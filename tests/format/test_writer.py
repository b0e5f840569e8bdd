import io
import json

import pytest

from tests.format.streams import Extent, make_meta
from vbbackup.format import StreamWriter, compress_chunk


def test_meta_frame_is_pretty_json_with_virtnbdbackup_keys():
    buf = io.BytesIO()
    StreamWriter(buf, make_meta(1 << 20, [])).finish()
    blob = buf.getvalue()
    length = int(blob[22:38], 16)
    payload = blob[40 : 40 + length]
    assert b"\n    " in payload  # indent 4
    meta = json.loads(payload)
    assert meta["virtualSize"] == 1 << 20
    assert meta["compressed"] is False
    assert meta["parentCheckpoint"] is False
    assert meta["streamVersion"] == 2
    assert blob.endswith(b"stop 0000000000000000 0000000000000000\r\n")


def test_short_frame_is_refused():
    w = StreamWriter(io.BytesIO(), make_meta(1 << 20, [Extent(0, 10, b"x" * 10)]))
    w.begin_data(0, 10)
    w.write_chunk(b"x" * 9)
    with pytest.raises(ValueError, match="short"):
        w.end_data()


def test_overrun_is_refused():
    w = StreamWriter(io.BytesIO(), make_meta(1 << 20, [Extent(0, 10, b"x" * 10)]))
    w.begin_data(0, 10)
    with pytest.raises(ValueError, match="overrun"):
        w.write_chunk(b"x" * 11)


def test_precompressed_chunks_need_a_compressed_stream():
    w = StreamWriter(io.BytesIO(), make_meta(1 << 20, []))
    w.begin_data(0, 3)
    with pytest.raises(ValueError, match="not compressed"):
        w.write_compressed_chunk(compress_chunk(b"abc"), b"abc")
