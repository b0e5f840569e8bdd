"""NbdkitServer against nbdkit's own plugins: readiness, read-only, cow, teardown."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vbbackup.errors import MountError
from vbbackup.nbdio import proc
from vbbackup.nbdio.server import NbdkitServer

nbd = pytest.importorskip("nbd")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("nbdkit") is None, reason="no nbdkit"),
]


def connect(uri: str):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def test_serves_on_a_socket_read_only_and_stops(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(b"A" * 4096 + b"B" * 4096)
    sock = tmp_path / "s.sock"
    with NbdkitServer(["file", str(image)], workdir=tmp_path, socket=sock) as server:
        assert server.uri == f"nbd+unix:///?socket={sock}"
        assert sock.exists()
        h = connect(server.uri)
        assert h.get_size() == 8192
        assert h.pread(4, 4094) == b"AABB"
        assert h.is_read_only()
        h.shutdown()
        pid = server.pid
    assert pid is not None and not proc.running(pid)
    assert not sock.exists()


def test_writable_goes_to_a_throwaway_overlay(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(65536))
    with NbdkitServer(
        ["file", str(image)], workdir=tmp_path, socket=tmp_path / "s.sock", writable=True
    ) as server:
        h = connect(server.uri)
        h.pwrite(b"written", 100)
        assert h.pread(7, 100) == b"written"
        h.shutdown()
    assert image.read_bytes() == bytes(65536)


def test_detached_server_outlives_the_object(tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(4096))
    server = NbdkitServer(["file", str(image)], workdir=tmp_path, socket=tmp_path / "s.sock")
    with server:
        server.detach()
    assert server.pid is not None and proc.running(server.pid, server.marker)
    server.stop()
    assert not (tmp_path / "s.sock").exists()


def test_plugin_error_is_one_line(tmp_path: Path) -> None:
    server = NbdkitServer(
        ["file", str(tmp_path / "missing.raw")], workdir=tmp_path, socket=tmp_path / "s.sock"
    )
    with pytest.raises(MountError, match=r"^nbdkit failed: .*missing\.raw"):
        server.start()
    assert not os.path.exists(tmp_path / "s.sock")
