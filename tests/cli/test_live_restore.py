"""``vbbackup restore --live``: the VM runs at once on images over its backup, the data is
pulled in while the guest writes, and at the end it runs on OUTDIR alone.

One set (two disks; a compressed full and a plain incremental) is made once; each test
live-restores it under a name of its own and compares every image with the point in
time plus the writes made into the restored VM during the copy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from click.testing import CliRunner

from tests.harness.fixtures import own_vm
from tests.harness.libvirtd import URI
from tests.harness.vm import DiskSpec, qemu_io
from vbbackup.cli import main

MiB = 1024 * 1024
VBBACKUP = [sys.executable, "-c", "from vbbackup.cli import main; main(prog_name='vbbackup')"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def live_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    """The set, and each disk's expected raw image at its newest point."""
    root = tmp_path_factory.mktemp("live")
    disks = [DiskSpec("vda", 24 * MiB), DiskSpec("vdb", 12 * MiB)]
    with own_vm(disks) as vm:
        out = root / "set"
        vm.write_pattern("vda", 1 * MiB, 3 * MiB, 0x11)
        vm.write_pattern("vdb", 2 * MiB, 1 * MiB, 0x22)
        _backup("full", vm.name, out, "--compress")
        vm.write_pattern("vda", 20 * MiB, 2 * MiB, 0x33)
        vm.write_pattern("vdb", 8 * MiB, 64 * 1024, 0x44)
        _backup("inc", vm.name, out)
        expected = {}
        for target in ("vda", "vdb"):
            expected[target] = root / f"{target}.expected.raw"
            shutil.copyfile(vm.expected(target), expected[target])
        yield out, expected


def _backup(level: str, name: str, out: Path, *extra: str) -> None:
    result = CliRunner(mix_stderr=False).invoke(
        main, [level, name, "-o", str(out), "--no-progress", *extra]
    )
    assert result.exit_code == 0, result.stderr


@pytest.fixture
def restored(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A name for the restored VM and its OUTDIR; the domain is removed afterwards."""
    name = f"vblive-{os.getpid()}-{tmp_path.name[-12:]}"
    top = Path(tempfile.mkdtemp(prefix="vblive-", dir="/var/tmp"))  # QEMU must reach it
    top.chmod(0o755)
    out = top / "out"
    yield name, out
    shutil.rmtree(top, ignore_errors=True)
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()
    subprocess.run(["pkill", "-f", f"^nbdkit .*vbbackup-live-{name}/"], check=False)
    shutil.rmtree(f"/var/tmp/vbbackup-live-{name}", ignore_errors=True)
    Path(f"/var/lib/vbbackup/live/{name}.json").unlink(missing_ok=True)


def _start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*VBBACKUP, *map(str, args)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _domain(name: str, run: subprocess.Popen[str], timeout: float = 60) -> libvirt.virDomain:
    """The restored domain once it runs."""
    conn = libvirt.open(URI)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.poll() is not None:
            raise AssertionError(f"restore --live exited {run.returncode}: {run.communicate()}")
        try:
            dom = conn.lookupByName(name)
            if dom.isActive():
                return dom
        except libvirt.libvirtError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name} did not start in {timeout} s")


def _write(dom: libvirt.virDomain, expected: dict[str, Path], target: str, offset: int,
           length: int, byte: int) -> None:  # fmt: skip
    """A guest write into the restored VM, and the same into the expected image."""
    qemu_io(dom, target, f"write -P {byte:#04x} {offset} {length}")
    with open(expected[target], "r+b") as f:
        f.seek(offset)
        f.write(bytes([byte]) * length)


def _pulled(dom: libvirt.virDomain, target: str) -> int:
    info = dom.blockJobInfo(target, 0)
    return int(info["cur"]) if info else -1


def _assert_done(name: str, out: Path, expected: dict[str, Path]) -> None:
    """Each image equals its expected disk, has no backing, is the only source the domain
    names (live and persistent); no server of the restore is left."""
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(name)
        for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
            xml = dom.XMLDesc(flags)
            assert "backingStore type" not in xml and "nbd" not in xml, xml
    finally:
        conn.close()
    for target, image_name in (("vda", "vda.qcow2"), ("vdb", "vdb.qcow2")):
        image = out / image_name
        assert f"<source file='{image}'" in xml
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(image)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert "backing-filename" not in info, info
        done = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "raw",
                               str(image), str(expected[target])],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    left = subprocess.run(["pgrep", "-f", f"^nbdkit .*vbbackup-live-{name}/"], capture_output=True)
    assert left.returncode == 1, left.stdout
    assert not Path(f"/var/lib/vbbackup/live/{name}.json").exists()
    assert not (out / ".vbbackup-live.json").exists()


def test_live_restore_keeps_guest_writes_made_during_the_copy(
    live_set: tuple[Path, dict[str, Path]], restored: tuple[str, Path], tmp_path: Path
) -> None:
    backup, originals = live_set
    name, out = restored
    expected = {t: shutil.copyfile(p, tmp_path / p.name) for t, p in originals.items()}
    run = _start("restore", backup, "-o", out, "--live", "--name", name, "--bandwidth", "1",
                 "--no-progress", "--json")  # fmt: skip
    dom = _domain(name, run)
    # the pull copies vda's 5 MiB of data (1-4 MiB, 20-22 MiB; its holes are zero clusters
    # already) at 1 MiB/s, about 5 s: these writes land before, inside and after the part
    # already copied, and on data the backup has (which they must win over)
    _write(dom, expected, "vda", 0, 4096, 0x5A)
    _write(dom, expected, "vda", 21 * MiB, 64 * 1024, 0x66)  # over the incremental's data
    _write(dom, expected, "vdb", 2 * MiB + 512, 1024, 0x77)  # inside the full's data
    deadline = time.monotonic() + 30
    while _pulled(dom, "vda") < 2 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < _pulled(dom, "vda") < 20 * MiB, "the copy was not under way"
    _write(dom, expected, "vda", 1 * MiB, 128 * 1024, 0x88)  # copied already
    _write(dom, expected, "vda", 23 * MiB, 4096, 0x99)  # not yet
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["name"] == name and result["running_seconds"] < result["complete_seconds"]
    _assert_done(name, out, expected)


def test_a_killed_live_restore_is_finished_by_resume_even_after_a_host_crash(
    live_set: tuple[Path, dict[str, Path]], restored: tuple[str, Path], tmp_path: Path
) -> None:
    backup, originals = live_set
    name, out = restored
    expected = {t: shutil.copyfile(p, tmp_path / p.name) for t, p in originals.items()}
    run = _start("restore", backup, "-o", out, "--live", "--name", name, "--bandwidth", "1",
                 "--no-progress")  # fmt: skip
    dom = _domain(name, run)
    _write(dom, expected, "vda", 21 * MiB, 4096, 0xAB)
    deadline = time.monotonic() + 30
    while _pulled(dom, "vda") < 2 * MiB and time.monotonic() < deadline:
        time.sleep(0.1)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    # the host goes down: QEMU and the servers die with it; the domain stays defined
    dom.destroy()
    subprocess.run(["pkill", "-KILL", "-f", f"^nbdkit .*vbbackup-live-{name}/"], check=False)
    assert subprocess.run(["pgrep", "-f", f"^nbdkit .*vbbackup-live-{name}/"]).returncode == 1
    code = subprocess.run([*VBBACKUP, "restore", "--live", "--resume", name, "--no-progress"],
                          capture_output=True, text=True)  # fmt: skip
    assert code.returncode == 0, code.stderr
    assert f"{name}: running after" in code.stdout and "complete after" in code.stdout
    _assert_done(name, out, expected)


def test_a_dead_server_is_started_again_by_resume(
    live_set: tuple[Path, dict[str, Path]], restored: tuple[str, Path], tmp_path: Path
) -> None:
    backup, originals = live_set
    name, out = restored
    run = _start("restore", backup, "-o", out, "--live", "--name", name, "--bandwidth", "1",
                 "--no-progress")  # fmt: skip
    _domain(name, run)
    time.sleep(1)
    subprocess.run(["pkill", "-KILL", "-f", f"^nbdkit .*vbbackup-live-{name}/vda.sock"])
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 10, stderr
    log = f"/var/tmp/vbbackup-live-{name}/nbdkit-vda.log"
    assert stderr.strip().splitlines()[-1] == (
        f"vbbackup: error: vda: the server of its backup died ({log}); the guest pauses at "
        f"its first read of data not copied yet; finish with vbbackup restore --live "
        f"--resume {name}"
    )
    # QEMU 7.2 cannot reconnect to a new server (libvirt 9.0 has no <reconnect delay>):
    # resume refuses until told it may restart the guest
    code = subprocess.run([*VBBACKUP, "restore", "--resume", name, "--no-progress"],
                          capture_output=True, text=True)  # fmt: skip
    assert code.returncode == 10
    assert code.stderr.strip().endswith(f"vbbackup restore --resume {name} --restart")
    code = subprocess.run([*VBBACKUP, "restore", "--resume", name, "--restart", "--bandwidth",
                           "1000", "--no-progress"], capture_output=True, text=True)  # fmt: skip
    assert code.returncode == 0, code.stderr
    _assert_done(name, out, {t: Path(p) for t, p in originals.items()})


def test_a_killed_command_leaves_the_copy_going_and_resume_waits_for_it(
    live_set: tuple[Path, dict[str, Path]], restored: tuple[str, Path], tmp_path: Path
) -> None:
    backup, originals = live_set
    name, out = restored
    run = _start("restore", backup, "-o", out, "--live", "--name", name, "--bandwidth", "1",
                 "--no-progress")  # fmt: skip
    dom = _domain(name, run)
    time.sleep(1)  # vda's 5 MiB of data take about 5 s at 1 MiB/s
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 130
    assert stderr.strip().splitlines()[-1] == (
        f"vbbackup: error: stopped by SIGTERM: {name} keeps running and its disks keep being "
        f"copied inside QEMU; finish with vbbackup restore --live --resume {name}"
    )
    assert dom.isActive() and _pulled(dom, "vda") >= 0, "the pull did not go on"
    code = subprocess.run([*VBBACKUP, "restore", "--resume", name, "--bandwidth", "1000",
                           "--no-progress"], capture_output=True, text=True)  # fmt: skip
    assert code.returncode == 0, code.stderr
    _assert_done(name, out, {t: Path(p) for t, p in originals.items()})


def test_refuses_a_name_that_exists(
    live_set: tuple[Path, dict[str, Path]], restored: tuple[str, Path]
) -> None:
    backup, _ = live_set
    name, out = restored
    saved = next(backup.glob("vmconfig.*.xml")).read_text()
    original = saved.split("<name>")[1].split("</name>")[0]
    result = CliRunner(mix_stderr=False).invoke(
        main,
        ["restore", str(backup), "-o", str(out), "--live", "--no-progress"],
        prog_name="vbbackup",
    )
    assert result.exit_code == 5
    assert result.stderr.strip().splitlines()[-1] == (
        f"vbbackup: error: a domain named {original!r} exists already; give the "
        "live-restored VM another name with --name"
    )
    assert not out.exists() or not any(out.iterdir())
