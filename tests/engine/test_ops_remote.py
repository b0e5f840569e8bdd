"""A "remote" host over loopback: libvirt through qemu+ssh, the export over TCP.

The test runs its own sshd on 127.0.0.1 (host and user keys made here), so the
libvirt connection, ``qemu-img info`` and the boot-file copies all go through
ssh exactly as they would to another machine; the NBD export is bound to
127.0.0.1. TLS for the export is not covered (see docs/operations.md).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.harness.backup import cp
from tests.harness.vm import DiskSpec, MiB, TestVM
from vbbackup.chain import open_view
from vbbackup.cli import main

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ssh_uri(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """qemu+ssh URI to this machine through a private sshd; yields (uri, sshd log)."""
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs openssh-server")
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True
        )
    (keys / "authorized_keys").write_text((keys / "user.pub").read_text())
    port = _free_port()
    config = keys / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        f"PasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile {keys / 'sshd.pid'}\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    log = keys / "sshd.log"
    with open(log, "wb") as out:
        sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=out)
    try:
        deadline = time.monotonic() + 10
        while b"Server listening" not in log.read_bytes():  # sshd says so once bound
            if sshd.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {log.read_text()}")
            time.sleep(0.05)
        uri = f"qemu+ssh://root@127.0.0.1:{port}/system?keyfile={keys / 'user'}&no_verify=1"
        yield uri, log
    finally:
        sshd.terminate()
        sshd.wait(10)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner(mix_stderr=False).invoke(main, list(args), prog_name="vbbackup")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def test_full_and_inc_of_a_domain_over_ssh_and_tcp(
    make_vm,  # type: ignore[no-untyped-def]
    ssh_uri: tuple[str, Path],
    tmp_path: Path,
) -> None:
    uri, log = ssh_uri
    vm: TestVM = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    out = tmp_path / "set"
    code, text = run("full", vm.name, "-c", uri, "-o", str(out), "--no-progress")
    assert code == 2
    assert "is a remote host: its disks are exported over TCP; give --nbd-host" in text
    tcp = ["--nbd-host", "127.0.0.1", "--nbd-port", str(_free_port()), "--no-progress"]
    vm.write_pattern("vda", 0, MiB, 0x11)
    first = vm.expected("vda")
    code, text = run("full", vm.name, "-c", uri, "-o", str(out), *tcp)
    assert code == 0, text
    vm.write_pattern("vda", 5 * MiB, MiB, 0x22)
    second = vm.expected("vda")
    code, text = run("inc", vm.name, "-c", uri, "-o", str(out), *tcp)
    assert code == 0, text
    for name, expected in ((cp(out, 0), first), (cp(out, 1), second)):
        with open_view(out, until=name) as view:
            assert view.read(0, view.size) == expected.read_bytes(), name
    assert (out / f"vda.{cp(out, 1)}.qcow.json").exists()  # qemu-img info over ssh
    # libvirt's connection and our qemu-img commands each logged in through the sshd
    assert log.read_text().count("Accepted publickey for root") >= 4


QEMU_PKI = Path("/etc/pki/qemu")  # libvirt's default_tls_x509_cert_dir (qemu.conf)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def qemu_tls(tmp_path: Path) -> Iterator[Path]:
    """A throwaway CA, server and client certificates in libvirt's default x509 directory.

    Installed only where there is none yet (a host's real certificates are never
    touched) and removed afterwards. Yields the directory (client files included).
    """
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    if QEMU_PKI.exists() and any(QEMU_PKI.iterdir()):
        pytest.skip(f"{QEMU_PKI} holds certificates of this host; not replacing them")
    work = tmp_path / "pki"
    work.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(work / "ca-key.pem"), "-out", str(work / "ca-cert.pem"),
             "-subj", "/CN=vbbackup test CA")  # fmt: skip
    for who, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        ext = work / f"{who}.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            f"extendedKeyUsage={usage}\nkeyUsage=digitalSignature,keyEncipherment\n"
        )
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(work / f"{who}-key.pem"),
                 "-out", str(work / f"{who}.csr"), "-subj", "/CN=localhost")  # fmt: skip
        _openssl("x509", "-req", "-in", str(work / f"{who}.csr"), "-days", "2",
                 "-CA", str(work / "ca-cert.pem"), "-CAkey", str(work / "ca-key.pem"),
                 "-CAcreateserial", "-out", str(work / f"{who}-cert.pem"),
                 "-extfile", str(ext))  # fmt: skip
    created = [p for p in (QEMU_PKI.parent, QEMU_PKI) if not p.exists()]
    QEMU_PKI.mkdir(parents=True, exist_ok=True)
    try:
        for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem",
                     "client-cert.pem", "client-key.pem"):  # fmt: skip
            shutil.copy(work / name, QEMU_PKI / name)
            (QEMU_PKI / name).chmod(0o644)  # QEMU runs as libvirt-qemu
        for path in created:
            path.chmod(0o755)
        yield QEMU_PKI
    finally:
        for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem",
                     "client-cert.pem", "client-key.pem"):  # fmt: skip
            (QEMU_PKI / name).unlink(missing_ok=True)
        for path in reversed(created):
            path.rmdir()


def test_tls_export_over_ssh(
    make_vm,  # type: ignore[no-untyped-def]
    ssh_uri: tuple[str, Path],
    qemu_tls: Path,
    tmp_path: Path,
) -> None:
    uri, _ = ssh_uri
    vm: TestVM = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    out = tmp_path / "set"
    vm.write_pattern("vda", 2 * MiB, MiB, 0x33)
    expected = vm.expected("vda")
    code, text = run("full", vm.name, "-c", uri, "-o", str(out), "--tls", "--no-progress")
    assert code == 2
    assert "--tls protects the TCP export: give --nbd-host" in text
    code, text = run(
        "full", vm.name, "-c", uri, "-o", str(out), "--tls", "--nbd-host", "127.0.0.1",
        "--nbd-port", str(_free_port()), "--tls-cert-dir", str(tmp_path), "--no-progress",
    )  # fmt: skip
    assert code == 2
    assert f"--tls: {tmp_path} lacks ca-cert.pem, client-cert.pem, client-key.pem" in text
    code, text = run(
        "full", vm.name, "-c", uri, "-o", str(out), "--tls", "--nbd-host", "127.0.0.1",
        "--nbd-port", str(_free_port()), "--no-progress",
    )  # fmt: skip
    assert code == 0, text
    with open_view(out) as view:
        assert view.read(0, view.size) == expected.read_bytes()
