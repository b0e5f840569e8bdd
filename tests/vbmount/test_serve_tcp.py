"""vbmount serve over TCP: loopback unless --listen says otherwise, TLS (PSK and X.509
certificates) through nbdkit, an export name; read back with libnbd."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.fixtures import require
from tests.vbmount.conftest import TwoPointSet
from vbbackup.nbdio import proc

nbd = pytest.importorskip("nbd")
pytestmark = pytest.mark.integration
Serve = Callable[..., tuple[int, str]]
VBMOUNT = [sys.executable, "-c", "from vbmount.cli import main; main(prog_name='vbmount')"]


@pytest.fixture(autouse=True)
def _needs_nbdkit() -> None:
    require("nbdkit", "nbdkit_python", "qemu")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def serving(two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path) -> Iterator[Serve]:
    """``serve(*options)`` starts vbmount serve --daemon on a free port and returns
    (port, its printed URI); every server is stopped afterwards."""
    started: list[tuple[int, str]] = []

    def serve(*options: str) -> tuple[int, str]:
        port = free_port()
        pidfile = tmp_path / f"serve-{port}.pid"
        argv = [*VBMOUNT, "serve", str(two_point_set.directory), "--port", str(port),
                "--daemon", "--pidfile", str(pidfile), *options]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        started.append((int(pidfile.read_text()), f"--port={port}"))
        return port, done.stdout.splitlines()[0]

    yield serve
    for pid, marker in started:
        proc.terminate(pid, marker)


def listeners(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def newest_bytes(two_point_set: TwoPointSet) -> bytes:
    with open(two_point_set.images[-1], "rb") as f:
        f.seek(1 << 20)
        return f.read(65536)


def test_a_tcp_export_listens_on_loopback_only_by_default(
    serving: Serve, two_point_set: TwoPointSet
) -> None:
    port, uri = serving()
    assert uri == f"nbd://127.0.0.1:{port}/"
    assert listeners(port) == {"0100007F"}  # 127.0.0.1, nothing else
    h = nbd.NBD()
    h.connect_uri(uri)
    assert h.pread(65536, 1 << 20) == newest_bytes(two_point_set)
    h.shutdown()


def test_listen_every_address_when_asked(serving: Serve) -> None:
    port, uri = serving("--listen", "0.0.0.0")
    assert listeners(port) == {"00000000"}
    assert uri == f"nbd://localhost:{port}/"


def test_tls_psk_refuses_plain_clients_and_serves_the_export_name(
    serving: Serve, two_point_set: TwoPointSet, tmp_path: Path
) -> None:
    psk = tmp_path / "keys.psk"
    psk.write_text("alice:" + "ab" * 32 + "\n")
    psk.chmod(0o600)
    port, uri = serving("--tls", "--tls-psk", str(psk), "--export-name", "web01")
    assert uri == f"nbds://127.0.0.1:{port}/web01"
    plain = nbd.NBD()
    with pytest.raises(nbd.Error):
        plain.connect_uri(f"nbd://127.0.0.1:{port}/web01")
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_username("alice")
    h.set_tls_psk_file(str(psk))
    h.set_opt_mode(True)
    h.connect_tcp("127.0.0.1", str(port))
    names: list[str] = []
    h.opt_list(lambda name, description: names.append(name) or 0)
    assert names == ["web01"]
    h.set_export_name("web01")
    h.opt_go()
    assert h.pread(65536, 1 << 20) == newest_bytes(two_point_set)
    h.shutdown()


def test_tls_certificates(serving: Serve, two_point_set: TwoPointSet, tmp_path: Path) -> None:
    certs = tmp_path / "pki"
    certs.mkdir()
    _make_certificates(certs)
    port, uri = serving("--tls", "--tls-certificates", str(certs))
    assert uri == f"nbds://127.0.0.1:{port}/"
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(str(certs))  # the client reads ca-cert.pem there
    h.connect_tcp("127.0.0.1", str(port))
    assert h.pread(65536, 1 << 20) == newest_bytes(two_point_set)
    h.shutdown()


def test_tls_needs_a_key_or_certificates(two_point_set: TwoPointSet, state_dir: Path) -> None:
    done = subprocess.run([*VBMOUNT, "serve", str(two_point_set.directory), "--port",
                           str(free_port()), "--tls"], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "vbmount: error: --tls needs --tls-certificates DIR or --tls-psk FILE"
    )


def _make_certificates(out: Path) -> None:
    """A CA and a server certificate for 127.0.0.1/localhost, in nbdkit's file names."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=out, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
            "-keyout", "ca-key.pem", "-out", "ca-cert.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server-key.pem", "-out", "server.csr")  # fmt: skip
    (out / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                 "extendedKeyUsage=serverAuth\n")  # fmt: skip
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca-cert.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server-cert.pem",
    )
