"""``vbbackup full|inc|diff|copy|auto``: help, error lines, signals, a killed run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest
from click.testing import CliRunner

from tests.engine.test_backup import reconstruct
from tests.harness.backup import cp
from tests.harness.compare import assert_identical
from tests.harness.vm import DiskSpec, TestVM
from vbbackup.cli import main
from vbbackup.cli.backup import BACKUP_COMMANDS
from vbbackup.engine.lock import domain_lock

MiB = 1024 * 1024
VBBACKUP = [sys.executable, "-c", "from vbbackup.cli import main; main(prog_name='vbbackup')"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner(mix_stderr=False).invoke(main, list(args), prog_name="vbbackup")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_every_backup_command_and_option_has_help() -> None:
    for command in BACKUP_COMMANDS:
        assert command.help
        for param in command.params:
            if isinstance(param, __import__("click").Option):
                assert param.help, f"{command.name} {param.opts}"


@pytest.mark.integration
def test_bad_uri_is_one_line(tmp_path: Path) -> None:
    code, _, err = run("full", "x", "-c", "qemu+unix:///system?socket=/nonexistent", "-o",
                       str(tmp_path))  # fmt: skip
    assert code == 6
    assert err.startswith("vbbackup: error: cannot connect to libvirt at qemu+unix:///system")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.integration
def test_unknown_domain_is_one_line(libvirt_conn, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = run("full", "vbtest-no-such-domain", "-o", str(tmp_path / "o"))
    assert code == 6
    assert err == ("vbbackup: error: domain 'vbtest-no-such-domain' not found at qemu:///system\n")


@pytest.mark.integration
def test_user_errors_on_a_real_vm(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB), DiskSpec("vdb", 8 * MiB, fmt="raw")])
    out = tmp_path / "set"
    code, _, err = run("inc", vm.name, "-o", str(out), "--no-progress")
    assert code == 4
    assert err == (
        f"vbbackup: error: no full backup in {out} ({vm.name}.cpt is missing): "
        f"run `vbbackup full {vm.name} -o {out}` first\n"
    )
    code, _, err = run("full", vm.name, "-o", str(out), "-i", "vdz")
    assert code == 2
    assert err == f"vbbackup: error: domain {vm.name!r} has no disk 'vdz' (disks: vda, vdb)\n"
    code, _, err = run("full", vm.name, "-o", str(out), "-x", "vda")
    assert code == 2
    assert "nothing to back up" in err and "--raw copies it whole" in err

    blocked = tmp_path / "ro"
    blocked.mkdir()
    (blocked / "file").write_text("")
    code, _, err = run("full", vm.name, "-o", str(blocked / "file" / "sub"))
    assert code == 1
    assert err.startswith("vbbackup: error: cannot create output directory") and err[-1] == "\n"

    with domain_lock(vm.name, vm.dom.UUIDString()):
        code, _, err = run("full", vm.name, "-o", str(out))
    assert code == 8
    assert err == (
        f"vbbackup: error: another vbbackup run (pid {os.getpid()}) is backing up domain "
        f"{vm.name!r}; wait for it to finish\n"
    )

    code, stdout, err = run("full", vm.name, "-o", str(out), "--json", "-q")
    assert code == 0, err
    assert err == ""
    summary = json.loads(stdout)
    assert summary["checkpoint"] == cp(out, 0)
    assert summary["skipped"]["vdb"].startswith("raw image cannot carry checkpoints")
    code, _, err = run("full", vm.name, "-o", str(out))
    assert code == 5
    assert "already holds a backup chain" in err


@pytest.mark.integration
def test_qcow2_v2_names_the_ways_out(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)], qcow2_compat="0.10")
    code, _, err = run("full", vm.name, "-o", str(tmp_path / "set"))
    assert code == 6
    assert "qcow2 v2 image (compat=0.10)" in err
    assert "`vbbackup copy`" in err and "qemu-img amend -o compat=1.1" in err
    vm.write_pattern("vda", 0, MiB, 0x12)
    code, _, err = run("copy", vm.name, "-o", str(tmp_path / "copy"), "-q")
    assert code == 0, err
    got = reconstruct([tmp_path / "copy" / "vda.copy.data"], 16 * MiB, tmp_path / "a.raw")
    assert_identical(got, vm.expected("vda"), fmt="raw")


@pytest.mark.integration
def test_full_disk_is_one_line_and_leaves_no_file(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    vm.write_pattern("vda", 0, 4 * MiB, 0x99)
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        code, _, err = run("full", vm.name, "-o", str(mnt / "set"))
        assert code == 1
        assert err == (
            f"vbbackup: error: cannot write {mnt}/set/vda.full.data: No space left on device\n"
        )
        assert not list((mnt / "set").glob("*.data*"))
        assert not list((mnt / "set").glob("*.cpt"))
        assert vm.dom.listAllCheckpoints() == []  # the run's checkpoint went with it
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert vm.dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE


def _slow_backup(vm: TestVM, level: str, out: Path) -> subprocess.Popen[str]:
    """A backup that takes a few seconds: lz4 HC (level 16) over random data."""
    return subprocess.Popen(
        [*VBBACKUP, level, vm.name, "-o", str(out), "--compress=16", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_partial(proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for path in out.glob("*.data.partial"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size > MiB:
                    return
        time.sleep(0.005)
    raise AssertionError(f"no partial file appeared: {proc.communicate()}")


def _fill(vm: TestVM, size: int) -> None:
    for off in range(0, size, 4 * MiB):
        vm.write("vda", off, os.urandom(4 * MiB))


def _full_in_flight(
    make_vm: Callable[..., TestVM], tmp_path: Path, filled: int
) -> tuple[TestVM, Path, subprocess.Popen[str]]:
    """A 64 MiB disk with ``filled`` random bytes, and a full backup of it half written."""
    vm = make_vm(disks=[DiskSpec("vda", 64 * MiB)])
    _fill(vm, filled)
    out = tmp_path / "set"
    proc = _slow_backup(vm, "full", out)
    _wait_for_partial(proc, out)
    return vm, out, proc


@pytest.mark.integration
def test_sigterm_ends_the_job_and_keeps_nothing_half_written(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm, out, proc = _full_in_flight(make_vm, tmp_path, 64 * MiB)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "vbbackup: error: stopped by SIGTERM"
    assert vm.dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
    assert not list(out.glob("*.partial")) and not list(out.glob("*.data"))
    assert not list(Path("/var/tmp").glob(f"vbbackup-{vm.name}-{proc.pid}.*"))
    assert vm.dom.listAllCheckpoints() == []  # the run's checkpoint went with it
    assert not (out / ".vbbackup-pending").exists()


@pytest.mark.integration
def test_sigkill_mid_disk_then_the_next_runs_recover(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm, out, proc = _full_in_flight(make_vm, tmp_path, 48 * MiB)
    proc.kill()
    proc.communicate()
    assert vm.dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE  # the dead run's job lives on

    code, _, err = run("inc", vm.name, "-o", str(out))
    assert code == 4 and "no full backup in" in err

    code, _, err = run("full", vm.name, "-o", str(out), "--no-progress")
    assert code == 0, err
    assert "ended a backup job left by a run that died" in err
    assert "removing files left by a run that did not finish: vda.full.data.partial" in err
    full_expected = vm.expected("vda")

    vm.write("vda", 60 * MiB, os.urandom(3 * MiB))
    _fill(vm, 40 * MiB)
    proc = _slow_backup(vm, "inc", out)
    _wait_for_partial(proc, out)
    proc.kill()
    proc.communicate()

    code, _, err = run("inc", vm.name, "-o", str(out), "--no-progress")
    assert code == 0, err
    assert f"deleted checkpoints {cp(out, 1)} of a run that did not finish" in err
    names = sorted(cp.getName() for cp in vm.dom.listAllCheckpoints())
    assert names == [cp(out, 0), cp(out, 1)]
    assert json.loads((out / f"{vm.name}.cpt").read_text()) == names
    files = [out / "vda.full.data"]
    assert_identical(reconstruct(files, 64 * MiB, tmp_path / "0.raw"), full_expected, fmt="raw")
    files.append(out / f"vda.inc.{cp(out, 1)}.data")
    got = reconstruct(files, 64 * MiB, tmp_path / "1.raw")
    assert_identical(got, vm.expected("vda"), fmt="raw")


@pytest.mark.integration
def test_socket_qemu_may_not_create_names_the_fix(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)  # root's: QEMU (libvirt-qemu) may not create its socket here
    code, _, err = run("full", vm.name, "-o", str(tmp_path / "set"), "--scratchdir", str(closed))
    assert code == 6
    wanted = "vbbackup: error: QEMU may not create the backup job's socket and scratch files"
    assert err.startswith(f"{wanted} in {closed} ")
    assert f"'{closed}/vbbackup-*.sock rw,'" in err
    assert "/etc/apparmor.d/local/abstractions/libvirt-qemu" in err
    assert err.count("\n") == 1
    assert vm.dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
    assert [cp.getName() for cp in vm.dom.listAllCheckpoints()] == []


@pytest.mark.integration
def test_two_disks_one_worker_and_a_summary_per_disk(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB), DiskSpec("vdb", 16 * MiB)])
    vm.write_pattern("vda", 0, 3 * MiB, 0x61)
    vm.write_pattern("vdb", 5 * MiB, 2 * MiB, 0x62)
    out = tmp_path / "set"
    code, _, err = run("full", vm.name, "-o", str(out), "--workers", "1", "--compress=9")
    assert code == 0, err
    lines = err.splitlines()
    assert any(line.startswith("vda: full, 3.0 MiB data, file vda.full.data ") for line in lines)
    assert any(line.startswith("vdb: full, 2.0 MiB data, file vdb.full.data ") for line in lines)
    assert "\x1b" not in err and "\r" not in err and "%" not in err  # stderr is no terminal
    for target in ("vda", "vdb"):
        got = reconstruct([out / f"{target}.full.data"], 16 * MiB, tmp_path / f"{target}.raw")
        assert_identical(got, vm.expected(target), fmt="raw")


@pytest.mark.integration
def test_inc_after_a_resize_says_to_start_a_new_chain(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    out = tmp_path / "set"
    code, _, err = run("full", vm.name, "-o", str(out), "-q")
    assert code == 0, err
    vm.dom.blockResize("vda", 32 * MiB, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    code, _, err = run("inc", vm.name, "-o", str(out), "-q")
    assert code == 4
    assert err == (
        f"vbbackup: error: disk vda changed size since the full backup ({16 * MiB} -> "
        f"{32 * MiB} bytes): start a new chain with `vbbackup full` into a new directory\n"
    )


def _kill_between_disks(vm: TestVM, level: str, out: Path) -> None:
    """Disks one at a time: kill -9 once vda's stream is finished and vdb's is half written."""
    proc = subprocess.Popen(
        [*VBBACKUP, level, vm.name, "-o", str(out), "--compress=16", "--workers", "1",
         "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    pattern = {"full": "vda.full.data", "copy": "vda.copy.data"}.get(level, f"vda.{level}.*.data")
    while time.monotonic() < deadline and proc.poll() is None:
        finished = list(out.glob(pattern))
        partial = list(out.glob("vdb.*.data.partial"))
        half = False
        with contextlib.suppress(FileNotFoundError):
            half = bool(partial) and partial[0].stat().st_size > MiB
        if finished and half:
            proc.kill()
            proc.communicate()
            return
        time.sleep(0.005)
    raise AssertionError(f"never between the disks: {proc.communicate()}")


@pytest.mark.integration
def test_sigkill_between_disks_leaves_no_point_that_covers_some(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 8 * MiB), DiskSpec("vdb", 64 * MiB)])
    vm.write("vda", 0, os.urandom(2 * MiB))
    for off in range(0, 48 * MiB, 4 * MiB):
        vm.write("vdb", off, os.urandom(4 * MiB))
    out = tmp_path / "set"
    _kill_between_disks(vm, "full", out)  # a killed full into a fresh directory
    code, _, err = run("full", vm.name, "-o", str(out), "--no-progress")  # is not blocked
    assert code == 0, err
    assert "removing files of a run that did not finish: vda.full.data" in err
    assert [c.getName() for c in vm.dom.listAllCheckpoints()] == [cp(out, 0)]

    vm.write("vda", 4 * MiB, os.urandom(MiB))
    for off in range(0, 40 * MiB, 4 * MiB):  # a slow second disk again
        vm.write("vdb", off, os.urandom(4 * MiB))
    expected = {t: vm.expected(t) for t in ("vda", "vdb")}
    _kill_between_disks(vm, "diff", out)
    (diff,) = out.glob("vda.diff.*.data")  # finished, but its run never committed
    code, text, err = run("info", str(out))
    assert code == 0, err
    assert f"Warning: {diff}: written by a backup that did not finish (not committed)" in text
    assert "diff." not in text.split("Disk vda:")[0]  # not a point of the chain
    restored = tmp_path / "restored"
    code, _, err = run("restore", str(out), "-o", str(restored), "--format", "raw")
    assert code == 0, err
    assert (restored / "vda.raw").read_bytes() != expected["vda"].read_bytes()  # the full's
    code, _, err = run("diff", vm.name, "-o", str(out), "--no-progress")
    assert code == 0, err
    assert f"removing files of a run that did not finish: {diff.name}" in err
    assert not diff.exists()
    for target in ("vda", "vdb"):
        shutil.rmtree(restored)
        code, _, err = run("restore", str(out), "-o", str(restored), "--format", "raw",
                           "--disk", target)  # fmt: skip
        assert code == 0, err
        assert_identical(restored / f"{target}.raw", expected[target], fmt="raw")


@pytest.mark.integration
@pytest.mark.parametrize("level", ["inc", "copy"])
def test_sigkill_between_disks_then_the_same_level_again(make_vm, tmp_path: Path, level) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 8 * MiB), DiskSpec("vdb", 64 * MiB)])
    out = tmp_path / "set"
    assert run("full", vm.name, "-o", str(out), "--no-progress")[0] == 0
    vm.write("vda", 0, os.urandom(2 * MiB))
    for off in range(0, 48 * MiB, 4 * MiB):
        vm.write("vdb", off, os.urandom(4 * MiB))
    expected = {t: vm.expected(t) for t in ("vda", "vdb")}
    _kill_between_disks(vm, level, out)
    code, text, err = run("verify", str(out), "--no-progress")
    assert code == 0, text + err  # the killed run's finished vda file is not in the set
    assert "did not finish" in err
    code, _, err = run(level, vm.name, "-o", str(out), "--no-progress")
    assert code == 0, err
    assert "of a run that did not finish" in err
    until = ["--until", "copy"] if level == "copy" else []
    restored = tmp_path / "restored"
    for target in ("vda", "vdb"):
        shutil.rmtree(restored, ignore_errors=True)
        code, _, err = run("restore", str(out), "-o", str(restored), "--format", "raw",
                           "--disk", target, *until)  # fmt: skip
        assert code == 0, err
        assert_identical(restored / f"{target}.raw", expected[target], fmt="raw")
