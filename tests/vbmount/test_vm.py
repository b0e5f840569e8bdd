"""vbmount on backup sets of a live test VM: file-level restore and instant recovery.

The VM's disk holds a GPT with two ext4 partitions and an xfs one, each with known
files; a full backup is taken; the blocks where a second such image differs are
written into the live disk; an incremental follows.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner

from tests.harness.backup import backup_xml, cp, end_backup_job
from tests.harness.fixtures import require
from tests.harness.images import MiB, Partition, make_fs_image
from tests.harness.vm import DiskSpec, TestVM
from tests.integration.vnb_sets import run_vbbackup, run_virtnbdbackup
from tests.vbmount.conftest import leftovers
from vbmount.cli import main

pytestmark = pytest.mark.integration
Backed = tuple[TestVM, Path, dict[str, Path], dict[str, Path]]


def fs_image(path: Path, version: str) -> Path:
    make_fs_image(
        path,
        360 * MiB,
        [
            Partition(16 * MiB, "ext4", {"etc/fstab": f"{version} fstab\n".encode()}, "root"),
            Partition(24 * MiB, "ext4", {"data.txt": f"{version} data\n".encode()}, "data"),
            Partition(300 * MiB, "xfs", {"x/y.txt": f"{version} xfs\n".encode()}, "big"),
        ],
    )
    return path


def write_differences(vm: TestVM, target: str, old: Path, new: Path, block: int = 64 << 10):
    """Write into the live disk every run of blocks where `new` differs from `old`."""
    with open(old, "rb") as a, open(new, "rb") as b:
        pos, run_start, run = 0, 0, bytearray()
        while True:
            x, y = a.read(block), b.read(block)
            if x != y:
                if not run:
                    run_start = pos
                run += y
            elif run:
                vm.write(target, run_start, bytes(run))
                run = bytearray()
            if not x:
                break
            pos += len(x)


@pytest.fixture
def backed_up_vm(make_vm: Any, tmp_path: Path, request: pytest.FixtureRequest):
    """(vm, set directory, expected images {disk: path} at virtnbdbackup.0, at .1).

    vda holds the file systems; vdb is a second, small disk with raw patterns.
    """
    require("nbdkit", "nbdkit_python", "qemu")
    tool = getattr(request, "param", "vbbackup")
    if tool == "virtnbdbackup":
        require("virtnbdbackup")
    run = run_vbbackup if tool == "vbbackup" else run_virtnbdbackup
    old, new = fs_image(tmp_path / "old.raw", "old"), fs_image(tmp_path / "new.raw", "new")
    vm = make_vm(disks=[DiskSpec("vda", size=None, image=old), DiskSpec("vdb", size=16 * MiB)])
    backup = tmp_path / "set"
    vm.write_pattern("vdb", MiB, 3 * MiB, 0x5A)
    run(vm, backup, "full", compress=True)
    expected0 = {t: vm.expected(t) for t in ("vda", "vdb")}
    write_differences(vm, "vda", old, new)
    vm.write_pattern("vdb", 2 * MiB + 7, 5000, 0xA5)
    run(vm, backup, "inc", compress=True)
    expected1 = {t: vm.expected(t) for t in ("vda", "vdb")}
    return vm, backup, expected0, expected1


def vbmount(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="vbmount")
    return result.exit_code, result.output


@pytest.mark.parametrize("backed_up_vm", ["vbbackup", "virtnbdbackup"], indirect=True)
def test_mount_shows_each_point_in_time(
    backed_up_vm: Backed,
    tmp_path: Path,
    state_dir: Path,
    mount_capable: None,
    cleanup_mounts: list[Path],
) -> None:
    _vm, backup, _e0, _e1 = backed_up_vm
    code, out = vbmount("ls", backup, "--partitions")
    assert code == 0, out
    rows = [(line.split()[0], line.split()[-1]) for line in out.splitlines()[1:]]
    assert rows == [("vda", "ext4"), ("vda", "ext4"), ("vda", "xfs"), ("vdb", "unknown")]
    old, new = tmp_path / "old", tmp_path / "new"
    cleanup_mounts += [old, new]
    for mountpoint, point in ((old, cp(backup, 0)), (new, cp(backup, 1))):
        code, out = vbmount("mount", "--kernel", backup, mountpoint, "--until", point)
        assert code == 0, out
        assert out.splitlines()[-1] == "vdb: unknown -> unknown, not mounted"
    for mountpoint, version in ((old, "old"), (new, "new")):
        assert (mountpoint / "vda1/etc/fstab").read_text() == f"{version} fstab\n"
        assert (mountpoint / "vda2/data.txt").read_text() == f"{version} data\n"
        assert (mountpoint / "vda3/x/y.txt").read_text() == f"{version} xfs\n"
    for mountpoint in (old, new):
        assert vbmount("umount", mountpoint) == (0, "")
    assert leftovers(state_dir, tmp_path) == []
    assert list(state_dir.iterdir()) == []


def pull_backup_compare(
    conn: libvirt.virConnect, name: str, workdir: Path, expected: dict[str, Path]
) -> dict[str, str]:
    """Run a pull backup job on the domain and compare each disk's export with `expected`."""
    dom = conn.lookupByName(name)
    socket = workdir / "pull.sock"
    scratch = {t: workdir / f"pull.{t}.scratch" for t in expected}
    dom.backupBegin(backup_xml(socket, scratch, [], None), None)
    results = {}
    try:
        for target, image in expected.items():
            uri = f"nbd+unix:///{target}?socket={socket}"
            compare = ["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, str(image)]
            done = subprocess.run(compare, capture_output=True, text=True, check=False)
            results[target] = f"{done.returncode}: {(done.stdout + done.stderr).strip()}"
    finally:
        end_backup_job(dom)
    return results


def test_boot_runs_the_vm_from_its_backup(
    backed_up_vm: Backed,
    libvirt_conn: Any,
    state_dir: Path,
) -> None:
    vm, backup, expected0, _e1 = backed_up_vm
    name = f"{vm.name}-r"
    before = {p.name: p.stat().st_mtime_ns for p in backup.iterdir()}
    try:
        code, out = vbmount("boot", backup, "--until", cp(backup, 0), "--name", name)
        assert code == 0, out
        dom = libvirt_conn.lookupByName(name)
        assert dom.isActive()
        assert dom.UUIDString() != vm.dom.UUIDString()
        assert vm.dom.isActive()  # the original keeps running next to it
        workdir = Path(f"/var/tmp/vbmount-boot-{name}")
        assert pull_backup_compare(libvirt_conn, name, vm.dir, expected0) == {
            "vda": "0: Images are identical.",
            "vdb": "0: Images are identical.",
        }
        code, out = vbmount("boot", backup, "--name", name)
        assert (code, out) == (10, f"vbmount: error: domain {name} already exists "
                                   "(choose another with --name)\n")  # fmt: skip
    finally:
        code, out = vbmount("unboot", name)
    assert (code, out) == (0, "")
    assert name not in [d.name() for d in libvirt_conn.listAllDomains()]
    assert not workdir.exists()
    assert leftovers(state_dir, workdir) == []  # no nbdkit, no QEMU
    assert {p.name: p.stat().st_mtime_ns for p in backup.iterdir()} == before
    assert vbmount("unboot", name) == (0, f"nothing booted by vbmount as {name}\n")


def test_boot_without_start_then_unboot(
    backed_up_vm: Backed, libvirt_conn: Any, state_dir: Path
) -> None:
    vm, backup, _e0, _e1 = backed_up_vm
    name = f"{vm.name}-restore"  # the default name
    try:
        code, out = vbmount("boot", backup, "--no-start")
        assert code == 0, out
        assert out.splitlines()[0] == f"domain {name} defined"
        dom = libvirt_conn.lookupByName(name)
        assert not dom.isActive()
        xml = dom.XMLDesc()
        assert f"/var/tmp/vbmount-boot-{name}/vda.qcow2" in xml
        assert str(vm.disk_path("vda")) not in xml
    finally:
        code, out = vbmount("unboot", name)
    assert (code, out) == (0, "")
    assert name not in [d.name() for d in libvirt_conn.listAllDomains()]
    assert leftovers(state_dir, Path(f"/var/tmp/vbmount-boot-{name}")) == []
