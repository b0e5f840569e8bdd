"""NbdReader against private nbdkit servers (``-s``: no ports, no leftovers)."""

from __future__ import annotations

import shutil
import time

import pytest

from vbbackup.errors import NbdError
from vbbackup.nbdio import NbdReader, pieces

pytestmark = pytest.mark.skipif(shutil.which("nbdkit") is None, reason="needs nbdkit")
MiB = 1024 * 1024


def nbdkit(*args: str) -> list[str]:
    return ["nbdkit", "-s", "--exit-with-parent", *args]


def test_reads_every_byte_of_data_extents_in_order() -> None:
    # data plugin: 3 data ranges in a 64 MiB disk, the rest holes.
    spec = "@4096 1 2 3 @20000000 ( 0x55 0xaa )*600000 @60000000 9*10"
    with NbdReader(command=nbdkit("data", spec, "size=64M"), request_size=MiB) as r:
        allocation, dirty = r.extents()
        assert dirty == []
        assert any(e.zero for e in allocation)
        got = bytearray(r.size)
        for start, buf in r.read_pieces(pieces(allocation, r.request_size)):
            got[start : start + len(buf)] = buf
    expected = bytearray(64 * MiB)
    expected[4096:4099] = b"\x01\x02\x03"
    expected[20000000 : 20000000 + 1200000] = b"\x55\xaa" * 600000
    expected[60000000:60000010] = b"\x09" * 10
    assert got == expected


def test_holes_are_not_read_from_a_throttled_source() -> None:
    # 256 MiB at 8 MiB/s would take half a minute; 1 MiB of data takes well under 2 s.
    cmd = nbdkit("--filter=rate", "data", "@104857600 ( 0x11 )*1048576", "size=256M", "rate=8M")
    start = time.monotonic()
    with NbdReader(command=cmd) as r:
        allocation, _ = r.extents()
        total = sum(len(b) for _, b in r.read_pieces(pieces(allocation, r.request_size)))
    assert total == MiB
    assert time.monotonic() - start < 5


def test_requests_are_in_flight_together() -> None:
    # Every read waits 0.5 s in the server: 8 reads, 4 in flight -> about 1 s, not 4.
    cmd = nbdkit("--filter=delay", "sparse-random", "size=8M", "percent=100", "rdelay=500ms")
    with NbdReader(command=cmd, request_size=MiB, in_flight=4) as r:
        start = time.monotonic()
        got = list(r.read_pieces((i * MiB, MiB) for i in range(8)))
        elapsed = time.monotonic() - start
    assert [s for s, _ in got] == [i * MiB for i in range(8)]
    assert elapsed < 2.5


def test_request_size_is_capped_by_the_server_maximum() -> None:
    cmd = nbdkit("--filter=blocksize-policy", "memory", "8M", "blocksize-maximum=65536")
    with NbdReader(command=cmd, request_size=32 * MiB) as r:
        assert r.request_size == 65536


def test_read_error_is_one_nbd_error() -> None:
    cmd = nbdkit(
        "--filter=error",
        "sparse-random",
        "size=4M",
        "percent=100",
        "error=EIO",
        "error-pread-rate=1",
    )
    with NbdReader(command=cmd) as r, pytest.raises(NbdError, match="read from NBD"):
        list(r.read_pieces([(0, 65536)]))


def test_missing_socket_is_one_nbd_error(tmp_path) -> None:
    with pytest.raises(NbdError, match="cannot connect to NBD export 'vda' at"):
        NbdReader(socket=tmp_path / "none.sock", export="vda").open()
