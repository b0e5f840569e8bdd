"""More guest layouts through libguestfs: MBR with logical partitions, NTFS, a btrfs
subvolume, and a file system damaged between two points (a clear error, not a hang).

vda (MBR): p1 primary NTFS /docs/report.txt; p2 extended with
           p5 logical ext4 /logical.txt, p6 logical btrfs with subvolume @data (file.txt),
           p7 logical ext4 "broken" (its superblocks zeroed in point 1)
Point 1: @data/file.txt changed, /docs/new.txt added on NTFS, p7 damaged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.harness.backup import chain_names
from tests.harness.fixtures import own_vm, require
from tests.harness.gfs_images import build_images, changed_ranges, copy_images, edit_images
from tests.harness.vm import DiskSpec
from vbbackup.cli import main as vbbackup_main
from vbmount.cli import main as vbmount_main

MiB = 1024 * 1024
SECTOR = 512
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def point0(g: Any) -> None:
    dev = "/dev/sda"
    g.part_init(dev, "mbr")
    g.part_add(dev, "p", 2048, 2048 + 64 * 2048 - 1)  # 64 MiB NTFS
    g.part_add(dev, "e", 2048 + 64 * 2048, -1)  # extended: the rest
    start = 2048 + 64 * 2048 + 2048
    for size_mib in (64, 200, 32):  # p5, p6, p7: logical, each after a 1 MiB gap
        g.part_add(dev, "l", start, start + size_mib * 2048 - 1)
        start += size_mib * 2048 + 2048
    g.mkfs("ntfs", "/dev/sda1", label="WINDATA")
    g.mkfs("ext4", "/dev/sda5", label="logical")
    g.mkfs_btrfs(["/dev/sda6"], label="pool")
    g.mkfs("ext4", "/dev/sda7", label="broken")
    g.mount("/dev/sda1", "/")
    g.mkdir("/docs")
    g.write("/docs/report.txt", b"quarterly report\n")
    g.umount_all()
    g.mount("/dev/sda5", "/")
    g.write("/logical.txt", b"in a logical partition\n")
    g.umount_all()
    g.mount("/dev/sda6", "/")
    g.btrfs_subvolume_create("/@data")
    g.write("/@data/file.txt", b"btrfs v1\n")
    g.umount_all()
    g.mount("/dev/sda7", "/")
    g.write("/gone.txt", b"lost in point 1\n")


def point1(g: Any) -> None:
    g.mount("btrfsvol:/dev/sda6/@data", "/")
    g.write("/file.txt", b"btrfs v2\n")
    g.umount_all()
    g.mount("/dev/sda1", "/")
    g.write("/docs/new.txt", b"added on NTFS\n")
    g.umount_all()
    offset = _partition_start(g, 7)
    for backup_sb in (1024, 8193 * 1024, 24577 * 1024):  # ext4 1 KiB blocks: superblocks
        g.pwrite_device("/dev/sda", bytes(1024), offset + backup_sb)


def _partition_start(g: Any, number: int) -> int:
    for part in g.part_list("/dev/sda"):
        if part["part_num"] == number:
            return int(part["part_start"])
    raise AssertionError(f"no partition {number}")


def _vbmount(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner(mix_stderr=False).invoke(vbmount_main, [str(a) for a in args],
                                                prog_name="vbmount")  # fmt: skip
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def layout_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    require("guestfs")
    root = tmp_path_factory.mktemp("layouts")
    old = build_images({"vda": 512 * MiB}, point0, root / "p0")
    new = copy_images(old, root / "p1")
    edit_images(new, point1)
    with own_vm([DiskSpec("vda", None, image=old["vda"])]) as vm:
        out = root / "set"
        for level, extra in (("full", ["--compress"]), ("inc", [])):
            if level == "inc":
                for offset, data in changed_ranges(old["vda"], new["vda"]):
                    vm.write("vda", offset, data)
            result = CliRunner(mix_stderr=False).invoke(
                vbbackup_main, [level, vm.name, "-o", str(out), "--no-progress", *extra]
            )
            assert result.exit_code == 0, result.stderr
        yield out, chain_names(out)


def test_ls_finds_ntfs_logical_partitions_and_the_btrfs_subvolume(
    layout_set: tuple[Path, list[str]],
) -> None:
    out, (p0, _) = layout_set
    code, text, err = _vbmount("ls", out, "--until", p0)
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:3] for line in text.splitlines()[1:]}
    assert rows["/dev/sda1"] == ["vda", "ntfs"]
    assert rows["/dev/sda5"] == ["vda", "ext4"]
    assert rows["/dev/sda6"] == ["vda", "btrfs"]
    assert rows.get("btrfsvol:/dev/sda6/@data") == ["vda", "btrfs"], text
    assert rows["/dev/sda7"] == ["vda", "ext4"]


def test_get_from_each_file_system_at_the_newest_point(
    layout_set: tuple[Path, list[str]], tmp_path: Path
) -> None:
    out, _ = layout_set
    dest = tmp_path / "got"
    code, _, err = _vbmount("get", out, "/dev/sda1:/docs", "/dev/sda5:/logical.txt",
                            "btrfsvol:/dev/sda6/@data:/file.txt", "-o", dest)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (dest / "docs").iterdir()) == ["new.txt", "report.txt"]
    assert (dest / "logical.txt").read_text() == "in a logical partition\n"
    assert (dest / "file.txt").read_text() == "btrfs v2\n"


def test_a_damaged_file_system_is_a_clear_error(layout_set: tuple[Path, list[str]]) -> None:
    out, _ = layout_set
    code, _, err = _vbmount("ls", out, "/dev/sda7:/")
    assert code == 10
    line = err.strip().splitlines()[-1]
    assert line.startswith("vbmount: error: cannot mount /dev/sda7: "), line
