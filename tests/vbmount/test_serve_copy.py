"""vbmount serve (foreground, --daemon, --writable) and vbmount copy, through real nbdkit."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.harness.fixtures import require
from tests.vbmount.conftest import TwoPointSet
from vbbackup.nbdio import proc
from vbmount.cli import main

nbd = pytest.importorskip("nbd")
pytestmark = pytest.mark.integration
VBMOUNT = [sys.executable, "-c", "from vbmount.cli import main; main()"]


@pytest.fixture(autouse=True)
def _needs_nbdkit() -> None:
    require("nbdkit", "nbdkit_python", "qemu")


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def read_export(uri: str, length: int, offset: int = 0) -> bytes:
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        return h.pread(length, offset)
    finally:
        h.shutdown()


def test_serve_in_the_foreground_until_interrupted(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path
) -> None:
    sock = tmp_path / "nbd.sock"
    argv = [*VBMOUNT, "serve", str(two_point_set.directory), "--until", "virtnbdbackup.0",
            "--socket", str(sock)]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        uri = child.stdout.readline().strip()
        assert uri == f"nbd+unix:///?socket={sock}"
        with open(two_point_set.images[0], "rb") as f:
            assert read_export(uri, 65536, 1 << 20) == f.read(2 << 20)[1 << 20 : (1 << 20) + 65536]
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 0
    assert not sock.exists()


def test_writable_serve_never_changes_the_backup(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path
) -> None:
    before = digests(two_point_set.directory)
    sock, pidfile = tmp_path / "nbd.sock", tmp_path / "serve.pid"
    argv = [*VBMOUNT, "serve", str(two_point_set.directory), "--socket", str(sock),
            "--writable", "--daemon", "--pidfile", str(pidfile)]  # fmt: skip
    # --daemon returns at once although nbdkit keeps running: it does not hold our pipes.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines()[0] == f"nbd+unix:///?socket={sock}"
    pid = int(pidfile.read_text())
    try:
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        h.pwrite(b"overwritten by a test" * 1000, 1 << 20)
        h.flush()
        assert h.pread(21, 1 << 20) == b"overwritten by a test"
        h.shutdown()
    finally:
        proc.terminate(pid, str(sock))
    assert digests(two_point_set.directory) == before


def test_read_only_serve_refuses_writes(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path
) -> None:
    sock, pidfile = tmp_path / "nbd.sock", tmp_path / "serve.pid"
    argv = [*VBMOUNT, "serve", str(two_point_set.directory), "--socket", str(sock),
            "--daemon", "--pidfile", str(pidfile)]  # fmt: skip
    subprocess.run(argv, capture_output=True, timeout=60, check=True)
    try:
        h = nbd.NBD()
        h.connect_uri(f"nbd+unix:///?socket={sock}")
        assert h.is_read_only()
        with pytest.raises(nbd.Error):
            h.pwrite(b"x", 0)
        h.shutdown()
    finally:
        proc.terminate(int(pidfile.read_text()), str(sock))


def test_serve_errors(two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["serve", str(two_point_set.directory), "--until", "nope"], prog_name="vbmount"
    )
    assert result.exit_code == 4
    assert result.output.startswith("vbmount: error: unknown checkpoint 'nope'")
    result = runner.invoke(
        main,
        ["serve", str(two_point_set.directory), "--socket", "s", "--port", "10809"],
        prog_name="vbmount",
    )
    assert (result.exit_code, result.output) == (
        2,
        "vbmount: error: give --socket or --port, not both\n",
    )


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_copy_is_the_point_in_time_and_sparse(
    two_point_set: TwoPointSet, tmp_path: Path, fmt: str
) -> None:
    for k, image in enumerate(two_point_set.images):
        out = tmp_path / f"point{k}.{fmt}"
        result = CliRunner().invoke(
            main,
            ["copy", str(two_point_set.directory), str(out), "--until", two_point_set.points[k],
             "-O", fmt],
            prog_name="vbmount",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        compare = ["qemu-img", "compare", "-q", "-f", fmt, "-F", "raw", str(out), str(image)]
        assert subprocess.run(compare, check=False).returncode == 0
        assert allocated(out) < allocated(image) + (1 << 20)
        assert not Path(str(out) + ".partial").exists()


def test_copy_refuses_an_existing_target(two_point_set: TwoPointSet, tmp_path: Path) -> None:
    out = tmp_path / "out.qcow2"
    out.write_bytes(b"precious")
    args = ["copy", str(two_point_set.directory), str(out)]
    result = CliRunner().invoke(main, args, prog_name="vbmount")
    assert result.exit_code == 5
    assert result.output == (
        f"vbmount: error: {out} already exists; refusing to overwrite it (--force)\n"
    )
    assert out.read_bytes() == b"precious"
    result = CliRunner().invoke(main, [*args, "--force"], prog_name="vbmount")
    assert result.exit_code == 0, result.output
    compare = ["qemu-img", "compare", "-q", "-F", "raw", str(out), str(two_point_set.images[1])]
    assert subprocess.run(compare, check=False).returncode == 0


def test_foreground_server_dies_with_vbmount(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path
) -> None:
    """Even a SIGKILLed `vbmount serve` leaves no nbdkit behind (exit-with-parent)."""
    import time

    from tests.vbmount.conftest import leftovers

    sock = tmp_path / "nbd.sock"
    argv = [*VBMOUNT, "serve", str(two_point_set.directory), "--socket", str(sock)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == f"nbd+unix:///?socket={sock}"
        assert leftovers(sock) != []
        child.kill()
    deadline = time.monotonic() + 10
    while leftovers(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers(sock) == []


def test_a_stopped_daemon_leaves_nothing_behind(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path
) -> None:
    """`kill $(cat PIDFILE)` is how a --daemon server is stopped: nbdkit cleans up after itself."""
    argv = [*VBMOUNT, "serve", str(two_point_set.directory), "--daemon"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    pidfile = Path(done.stdout.splitlines()[1].removeprefix("pid file: "))
    assert pidfile.is_relative_to(state_dir)
    assert read_export(done.stdout.splitlines()[0], 4096)
    proc.terminate(int(pidfile.read_text()), str(pidfile.parent))
    assert list(state_dir.rglob("*")) == []
