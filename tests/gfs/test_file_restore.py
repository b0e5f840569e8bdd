"""Single-file restore through libguestfs (``vbmount ls/get/inspect``): a GPT disk with a vfat
ESP and an LVM volume group over two disks (root xfs, home ext4 spanning both disks),
backed up as full + a compressed inc that changes, adds and deletes files.

Point 0: /srv/a.txt "one", /srv/old.txt, /home/alice/notes.txt (uid 1000, 0600, mtime 1e9)
Point 1: /srv/a.txt "two", /srv/old.txt deleted, /home/alice/new.txt added
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.harness.backup import chain_names
from tests.harness.fixtures import own_vm, require
from tests.harness.gfs_images import build_images, changed_ranges, copy_images, edit_images
from tests.harness.vm import DiskSpec
from vbbackup.cli import main as vbbackup_main
from vbmount import resources
from vbmount.cli import main as vbmount_main

MiB = 1024 * 1024
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
FSTAB = (
    "/dev/mapper/vg0-root / xfs defaults 0 1\n"
    "/dev/mapper/vg0-home /home ext4 defaults 0 2\n"
    "LABEL=ESP /boot/efi vfat umask=0077 0 1\n"
)


def point0(g: Any) -> None:
    g.part_init("/dev/sda", "gpt")
    g.part_add("/dev/sda", "p", 2048, 2048 + 32 * 2048 - 1)  # 32 MiB ESP
    g.part_add("/dev/sda", "p", 2048 + 32 * 2048, -2048)
    g.part_set_gpt_type("/dev/sda", 1, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
    g.mkfs("vfat", "/dev/sda1", label="ESP")
    g.pvcreate("/dev/sda2")
    g.pvcreate("/dev/sdb")
    g.vgcreate("vg0", ["/dev/sda2", "/dev/sdb"])
    g.lvcreate("root", "vg0", 320)  # xfs needs 300 MiB
    g.lvcreate("home", "vg0", 200)  # the rest of sda2 (478 MiB) and on into sdb
    g.mkfs("xfs", "/dev/vg0/root", label="root")
    g.mkfs("ext4", "/dev/vg0/home", label="home")
    g.mount("/dev/vg0/root", "/")
    for d in ("/etc", "/usr/bin", "/bin", "/home", "/boot/efi", "/srv"):
        g.mkdir_p(d)
    g.write("/etc/fstab", FSTAB.encode())
    g.write("/etc/hostname", b"gfsguest\n")
    g.write("/etc/os-release", b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian 12"\n')
    g.write("/etc/debian_version", b"12.8\n")
    g.ln_s("/usr/bin/true", "/bin/sh")
    g.write("/srv/a.txt", b"one\n")
    g.write("/srv/old.txt", b"deleted in point 1\n")
    g.mount("/dev/vg0/home", "/home")
    g.mkdir_p("/home/alice")
    g.write("/home/alice/notes.txt", b"alice's notes\n")
    g.chown(1000, 1000, "/home/alice/notes.txt")
    g.chmod(0o600, "/home/alice/notes.txt")
    g.touch("/home/alice/notes.txt")
    g.utimens("/home/alice/notes.txt", 1_000_000_000, 0, 1_000_000_000, 0)
    g.ln_s("notes.txt", "/home/alice/latest")
    g.mount("/dev/sda1", "/boot/efi")
    g.mkdir_p("/boot/efi/EFI/BOOT")
    g.write("/boot/efi/EFI/BOOT/README", b"esp\n")


def point1(g: Any) -> None:
    g.mount("/dev/vg0/root", "/")
    g.mount("/dev/vg0/home", "/home")
    g.write("/srv/a.txt", b"two\n")
    g.rm("/srv/old.txt")
    g.write("/home/alice/new.txt", b"new in point 1\n")


@dataclass(frozen=True)
class LvmSet:
    directory: Path
    points: list[str]


def _vbmount(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner(mix_stderr=False).invoke(vbmount_main, [str(a) for a in args],
                                                prog_name="vbmount")  # fmt: skip
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _vbbackup(*args: str | Path) -> None:
    result = CliRunner(mix_stderr=False).invoke(vbbackup_main, [str(a) for a in args],
                                                prog_name="vbbackup")  # fmt: skip
    assert result.exit_code == 0, result.stderr


@pytest.fixture(scope="module")
def lvm_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LvmSet]:
    require("guestfs")
    root = tmp_path_factory.mktemp("gfs")
    old = build_images({"vda": 512 * MiB, "vdb": 192 * MiB}, point0, root / "p0")
    new = copy_images(old, root / "p1")
    edit_images(new, point1)
    disks = [DiskSpec(t, None, image=old[t]) for t in ("vda", "vdb")]
    with own_vm(disks) as vm:
        out = root / "set"
        _vbbackup("full", vm.name, "-o", out, "--no-progress")
        for target in ("vda", "vdb"):
            for offset, data in changed_ranges(old[target], new[target]):
                vm.write(target, offset, data)
        _vbbackup("inc", vm.name, "-o", out, "--no-progress", "--compress")
        yield LvmSet(out, chain_names(out))


def test_ls_lists_every_file_system_with_the_guests_mount_points(lvm_set: LvmSet) -> None:
    code, text, err = _vbmount("ls", lvm_set.directory)
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:]}
    assert rows["/dev/sda1"][0:2] == ["vda", "vfat"] and rows["/dev/sda1"][-2:] == [
        "ESP",
        "/boot/efi",
    ]
    assert rows["/dev/vg0/root"][0:2] == ["vda", "xfs"]
    assert rows["/dev/vg0/root"][-2:] == ["root", "/"]
    assert rows["/dev/vg0/home"][0:2] == ["vda+vdb", "ext4"]  # spans both disks
    assert rows["/dev/vg0/home"][-2:] == ["home", "/home"]


def test_ls_of_a_directory_at_each_point(lvm_set: LvmSet) -> None:
    p0, p1 = lvm_set.points
    code, text, err = _vbmount("ls", lvm_set.directory, "--until", p0, "/home/alice")
    assert code == 0, err
    assert [line.split()[0:3] + line.split()[5:] for line in text.splitlines()] == [
        ["link", "0777", "9", "latest", "->", "notes.txt"],
        ["file", "0600", "14", "notes.txt"],
    ]
    assert "2001-09-09 01:46" in text.splitlines()[1]  # mtime 1e9
    code, text, err = _vbmount("ls", lvm_set.directory, "/dev/vg0/root:/srv")
    assert code == 0, err
    assert [line.split()[-1] for line in text.splitlines()] == ["a.txt"]  # old.txt deleted
    code, _, err = _vbmount("ls", lvm_set.directory, "/srv/missing")
    assert code == 10
    assert err.strip().splitlines()[-1] == (
        "vbmount: error: /srv/missing: no such file or directory in the guest"
    )


def test_get_copies_each_points_files_with_owner_mode_and_times(
    lvm_set: LvmSet, tmp_path: Path
) -> None:
    p0, p1 = lvm_set.points
    for point, a_txt in ((p0, "one\n"), (p1, "two\n")):
        dest = tmp_path / point
        code, _, err = _vbmount("get", lvm_set.directory, "--until", point, "/srv/a.txt",
                                "/home/alice", "-o", dest)  # fmt: skip
        assert code == 0, err
        assert (dest / "a.txt").read_text() == a_txt
        notes = dest / "alice" / "notes.txt"
        st = notes.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1000, 0o600)
        assert int(st.st_mtime) == 1_000_000_000
        assert os.readlink(dest / "alice" / "latest") == "notes.txt"
        assert (dest / "alice" / "new.txt").exists() == (point == p1)
        assert not dest.with_name(dest.name + ".partial").exists()
    code, _, err = _vbmount("get", lvm_set.directory, "/srv/a.txt", "-o", tmp_path / p0)
    assert code == 5 and "exists; choose a new directory or give --force" in err


def test_get_as_a_tar_stream(lvm_set: LvmSet) -> None:
    p0, _ = lvm_set.points
    result = CliRunner(mix_stderr=False).invoke(
        vbmount_main, ["get", str(lvm_set.directory), "--until", p0, "/srv", "--tar", "-"],
        prog_name="vbmount",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    with tarfile.open(fileobj=io.BytesIO(result.stdout_bytes)) as archive:
        names = sorted(archive.getnames())
        content = archive.extractfile("srv/old.txt").read()  # type: ignore[union-attr]
    assert names == ["srv", "srv/a.txt", "srv/old.txt"]
    assert content == b"deleted in point 1\n"


def test_inspect_reports_the_guests_os(lvm_set: LvmSet) -> None:
    code, text, err = _vbmount("inspect", lvm_set.directory, "--json")
    assert code == 0, err
    (found,) = json.loads(text)
    assert (found["type"], found["distro"], found["hostname"]) == ("linux", "debian", "gfsguest")
    assert found["root"] == "/dev/vg0/root"
    assert found["mountpoints"] == {
        "/": "/dev/vg0/root", "/boot/efi": "/dev/sda1", "/home": "/dev/vg0/home",
    }  # fmt: skip


def test_mount_shows_the_guests_tree_and_umount_leaves_nothing(
    lvm_set: LvmSet, tmp_path: Path
) -> None:
    p0, _ = lvm_set.points
    mountpoint = tmp_path / "mnt"
    code, text, err = _vbmount("mount", lvm_set.directory, mountpoint, "--until", p0)
    assert code == 0, err
    try:
        assert (mountpoint / "srv/a.txt").read_text() == "one\n"
        assert (mountpoint / "home/alice/notes.txt").read_text() == "alice's notes\n"
        assert (mountpoint / "boot/efi/EFI/BOOT/README").read_text() == "esp\n"
        with pytest.raises(OSError):
            (mountpoint / "srv/new.txt").write_text("read-only")
    finally:
        code, _, err = _vbmount("umount", mountpoint)
        assert code == 0, err
    assert not mountpoint.exists()  # made by mount, removed by umount
    ps = subprocess.run(["pgrep", "-f", f"guestmount.*{mountpoint}"], capture_output=True)
    assert ps.stdout == b""
    assert resources.load("mount", str(mountpoint)) is None  # its servers and record gone
