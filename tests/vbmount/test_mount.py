"""vbmount ls/mount/umount on a backup set written from images: real nbdkit, nbdfuse,
loop devices and kernel mounts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.vbmount.conftest import TwoPointSet, leftovers
from vbmount.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("mount_capable")]


def vbmount(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="vbmount")
    return result.exit_code, result.output


def test_ls_lists_partitions_and_filesystems(two_point_set: TwoPointSet) -> None:
    code, out = vbmount("ls", two_point_set.directory, "--until", "virtnbdbackup.0", "--partitions")
    assert code == 0, out
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows == [
        ["vda", "1", str(1 << 20), str(16 << 20), "linux", "ext4"],
        ["vda", "2", str(17 << 20), str(24 << 20), "linux", "ext4"],
    ]


def test_each_point_shows_its_files_and_umount_leaves_nothing(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path, cleanup_mounts: list[Path]
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    cleanup_mounts += [old, new]
    code, out = vbmount(
        "mount", "--kernel", two_point_set.directory, old, "--until", "virtnbdbackup.0"
    )
    assert code == 0, out
    assert out.splitlines() == [f"vda1: ext4 -> {old}/vda1", f"vda2: ext4 -> {old}/vda2"]
    # point 1 has a dirty journal on vda1: it mounts anyway (noload), read-only.
    code, out = vbmount(
        "mount", "--kernel", two_point_set.directory, new, "--until", "virtnbdbackup.1"
    )
    assert code == 0, out

    assert (old / "vda1/etc/fstab").read_bytes() == b"old fstab\n"
    assert (old / "vda2/data.txt").read_bytes() == b"old data\n"
    assert not (old / "vda2/extra.bin").exists()
    assert (new / "vda1/etc/fstab").read_bytes() == b"new fstab\n"
    assert (new / "vda2/extra.bin").read_bytes() == b"x" * 100_000
    with pytest.raises(OSError, match="Read-only file system"):
        (new / "vda1/etc/fstab").write_bytes(b"changed")

    for mountpoint in (old, new):
        code, out = vbmount("umount", mountpoint)
        assert code == 0, out
        assert not mountpoint.exists()
    assert leftovers(state_dir, tmp_path) == []
    assert list(state_dir.iterdir()) == []
    code, out = vbmount("umount", old)  # again: nothing to do, no error
    assert (code, out) == (0, f"nothing mounted by vbmount at {old}\n")


def test_one_partition_at_the_mountpoint(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path, cleanup_mounts: list[Path]
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cleanup_mounts.append(mountpoint)
    code, out = vbmount(
        "mount", "--kernel", two_point_set.directory, mountpoint, "--partition", "2"
    )
    assert code == 0, out
    assert sorted(p.name for p in mountpoint.iterdir()) == ["data.txt", "extra.bin", "lost+found"]
    assert vbmount("umount", mountpoint)[0] == 0
    assert mountpoint.is_dir() and not any(mountpoint.iterdir())  # ours to keep: it existed
    assert leftovers(state_dir, tmp_path) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "virtnbdbackup.7"], "unknown checkpoint 'virtnbdbackup.7' for disk vda"),
        (["--partition", "3"], "vda has no partition 3 (partitions: 1, 2)"),
        (["--disk", "vdz"], "unknown disk 'vdz'"),
    ],
)
def test_bad_requests_are_one_line(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path, args: list[str], message: str
) -> None:
    code, out = vbmount("mount", "--kernel", two_point_set.directory, tmp_path / "mnt", *args)
    assert code != 0
    assert len(out.splitlines()) == 1 and out.startswith("vbmount: error: ")
    assert message in out
    assert not (tmp_path / "mnt").exists()
    assert leftovers(state_dir, tmp_path) == []


def test_busy_mountpoint_is_refused(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    (mountpoint / "something").write_text("x")
    code, out = vbmount("mount", "--kernel", two_point_set.directory, mountpoint)
    assert (code, out) == (10, f"vbmount: error: mountpoint busy: {mountpoint} is not empty\n")


def test_unsupported_filesystem(tmp_path: Path, state_dir: Path) -> None:
    from tests.vbmount.images import MiB, make_fs, partition, place
    from tests.vbmount.sets import write_set

    disk = tmp_path / "disk.raw"
    partition(disk, 16 * MiB, "label: gpt\nstart=2048, size=8MiB, type=swap\n")
    place(disk, make_fs(tmp_path / "swap", "swap", 8 * MiB), MiB)
    write_set(tmp_path / "set", [disk])
    code, out = vbmount("mount", "--kernel", tmp_path / "set", tmp_path / "mnt", "--partition", "1")
    assert (code, out) == (10, "vbmount: error: vda1: unsupported filesystem swap\n")
    code, out = vbmount("mount", "--kernel", tmp_path / "set", tmp_path / "mnt")
    assert code == 10 and "no mountable filesystem" in out


def test_no_fuse_and_no_kernel_nbd(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vbmount.blockdev.fuse_available", lambda: False)
    monkeypatch.setattr("vbmount.blockdev.kernel_nbd_available", lambda: False)
    code, out = vbmount("mount", "--kernel", two_point_set.directory, tmp_path / "mnt")
    assert (code, out) == (
        10,
        "vbmount: error: no FUSE here (/dev/fuse missing) and no kernel nbd (/dev/nbd*)\n",
    )
    assert leftovers(state_dir, tmp_path) == []


def test_something_already_mounted_there(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "vbmount-test", busy], check=True)
    try:
        code, out = vbmount("mount", "--kernel", two_point_set.directory, busy)
    finally:
        subprocess.run(["umount", busy], check=True)
    assert (code, out) == (10, f"vbmount: error: mountpoint busy: something is mounted at {busy}\n")


def test_whole_disk_filesystem_mounts_at_the_disk_name(tmp_path: Path, state_dir: Path) -> None:
    from tests.vbmount.images import MiB, ext4_with_files
    from tests.vbmount.sets import write_set

    disk = ext4_with_files(tmp_path / "disk.raw", 16 * MiB, {"hello": b"whole disk\n"}, "w")
    write_set(tmp_path / "set", [disk], disk="vdb")
    mountpoint = tmp_path / "mnt"
    code, out = vbmount("mount", "--kernel", tmp_path / "set", mountpoint)
    try:
        assert (code, out) == (0, f"vdb: ext4 -> {mountpoint}/vdb\n")
        assert (mountpoint / "vdb/hello").read_bytes() == b"whole disk\n"
    finally:
        assert vbmount("umount", mountpoint) == (0, "")
    assert leftovers(state_dir, tmp_path) == []


def test_umount_after_the_servers_died(
    two_point_set: TwoPointSet, tmp_path: Path, state_dir: Path, cleanup_mounts: list[Path]
) -> None:
    """nbdkit and nbdfuse killed behind vbmount's back: umount still removes everything."""
    import json
    import os
    import signal

    mountpoint = tmp_path / "mnt"
    cleanup_mounts.append(mountpoint)
    assert vbmount("mount", "--kernel", two_point_set.directory, mountpoint)[0] == 0
    (record,) = state_dir.glob("mount-*.json")
    state = json.loads(record.read_text())
    for pid in [s["pid"] for s in state["servers"]] + [f["pid"] for f in state["fuse"]]:
        os.kill(pid, signal.SIGKILL)
    assert vbmount("umount", mountpoint) == (0, "")
    assert not mountpoint.exists()
    assert leftovers(state_dir, tmp_path) == []
