"""Partition tables and file system signatures of images made by sfdisk and mkfs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.vbmount.images import MiB, file_reader, make_fs, partition, place
from vbmount.partitions import DiskLayout, Partition, detect_filesystem, read_layout

needs_xfs = pytest.mark.skipif(shutil.which("mkfs.xfs") is None, reason="no mkfs.xfs")


def layout_of(disk: Path) -> DiskLayout:
    with open(disk, "rb") as f:
        return read_layout(file_reader(f), disk.stat().st_size)


def summary(layout: DiskLayout) -> list[tuple[int, int, int, str, str]]:
    return [(p.number, p.start, p.size, p.type, p.filesystem) for p in layout.partitions]


@needs_xfs
def test_gpt_with_ext4_xfs_swap_and_empty_partition(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    partition(
        disk,
        384 * MiB,
        "label: gpt\n"
        "start=2048, size=16MiB, type=linux\n"
        "size=300MiB, type=linux\n"
        "size=4MiB, type=swap\n"
        "size=4MiB, type=linux\n",
    )
    place(disk, make_fs(tmp_path / "a", "ext4", 16 * MiB), 1 * MiB)
    place(disk, make_fs(tmp_path / "b", "xfs", 300 * MiB), 17 * MiB)  # xfs: 300 MiB at least
    place(disk, make_fs(tmp_path / "c", "swap", 4 * MiB), 317 * MiB)
    layout = layout_of(disk)
    assert layout.table == "gpt"
    assert summary(layout) == [
        (1, 1 * MiB, 16 * MiB, "linux", "ext4"),
        (2, 17 * MiB, 300 * MiB, "linux", "xfs"),
        (3, 317 * MiB, 4 * MiB, "linux-swap", "swap"),
        (4, 321 * MiB, 4 * MiB, "linux", "unknown"),
    ]
    assert [p.mountable for p in layout.partitions] == [True, True, False, False]


def test_mbr_primary_and_logical_partitions(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    partition(
        disk,
        64 * MiB,
        "label: dos\n"
        "start=2048, size=8MiB, type=83\n"
        "size=8MiB, type=c\n"
        "size=4MiB, type=83\n"
        "size=40MiB, type=5\n"
        "size=8MiB, type=83\n"
        "size=8MiB, type=82\n",
    )
    place(disk, make_fs(tmp_path / "a", "ext3", 8 * MiB), 1 * MiB)
    place(disk, make_fs(tmp_path / "b", "vfat", 8 * MiB), 9 * MiB)
    place(disk, make_fs(tmp_path / "e", "ext2", 8 * MiB), 22 * MiB)
    place(disk, make_fs(tmp_path / "f", "swap", 8 * MiB), 31 * MiB)
    layout = layout_of(disk)
    assert layout.table == "mbr"
    # sfdisk leaves one MiB (alignment) before each logical partition for its EBR.
    assert summary(layout) == [
        (1, 1 * MiB, 8 * MiB, "linux", "ext3"),
        (2, 9 * MiB, 8 * MiB, "fat32-lba", "vfat"),
        (3, 17 * MiB, 4 * MiB, "linux", "unknown"),
        (5, 22 * MiB, 8 * MiB, "linux", "ext2"),
        (6, 31 * MiB, 8 * MiB, "linux-swap", "swap"),
    ]


@pytest.mark.parametrize("fstype", ["ext2", "ext3", "ext4", "vfat", "swap"])
def test_whole_disk_file_system_without_table(tmp_path: Path, fstype: str) -> None:
    disk = make_fs(tmp_path / "disk.raw", fstype, 16 * MiB)
    layout = layout_of(disk)
    assert layout.table == "none"
    assert layout.partitions == (Partition(0, 0, 16 * MiB, "-", fstype),)


def test_empty_disk_is_unknown(tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(MiB))
    assert summary(layout_of(disk)) == [(0, 0, MiB, "-", "unknown")]


def test_signatures_without_tools() -> None:
    """btrfs and LVM PV, whose tools are not installed here: signatures written by hand."""
    btrfs = bytearray(128 * 1024)
    btrfs[0x10040:0x10048] = b"_BHRfS_M"
    lvm = bytearray(8192)
    lvm[512:520] = b"LABELONE"
    lvm[536:544] = b"LVM2 001"

    def reader(data: bytes):
        return lambda offset, length: bytes(data[offset : offset + length])

    assert detect_filesystem(reader(btrfs)) == "btrfs"
    assert detect_filesystem(reader(lvm)) == "lvm2-pv"


def test_truncated_disk_reads_stay_inside_the_disk() -> None:
    """A partition table pointing past the end yields no partition, not a read error."""
    sector = bytearray(512)
    sector[446 + 4] = 0x83
    sector[446 + 8 : 446 + 16] = (10_000).to_bytes(4, "little") + (100).to_bytes(4, "little")
    sector[510:512] = b"\x55\xaa"
    size = 512 * 64
    data = bytes(sector) + bytes(size - 512)

    def read(offset: int, length: int) -> bytes:
        if offset + length > size:
            raise ValueError("read past the end")
        return data[offset : offset + length]

    layout = read_layout(read, size)
    assert layout.table == "mbr"
    assert [(p.number, p.filesystem) for p in layout.partitions] == [(1, "unknown")]
