"""Partition tables (MBR, GPT) and file system signatures, read from plain bytes.

Pure: everything goes through a ``read(offset, length) -> bytes`` callable, so the
same code reads a chain view, an NBD export or an image file. Sectors are 512
bytes (GPT on 4096-byte sectors is recognised too)::

    disk:  [MBR | GPT header | entries ... | part 1 ...... | part 2 ...... ]
    MBR:   446: 4 x 16-byte entries (type at +4, start LBA at +8, sectors at +12),
           510: 55 aa.  Type 0xee = protective MBR of a GPT disk; types 0x05,
           0x0f, 0x85 = extended partition holding a chain of EBRs (logical
           partitions, numbered from 5).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass

Reader = Callable[[int, int], bytes]

SECTOR = 512
_EXTENDED = {0x05, 0x0F, 0x85}
_PROTECTIVE = 0xEE
_MAX_LOGICAL = 128  # bounds the EBR walk on a looping chain

# Kind of file system -> how the kernel mounts it read-only without touching it:
# a dirty journal is not replayed (ext4 noload, xfs norecovery, btrfs nologreplay);
# xfs nouuid lets two points in time of one file system be mounted at once.
MOUNT_OPTIONS: dict[str, tuple[str, str]] = {
    "ext2": ("ext4", "ro,noload"),
    "ext3": ("ext4", "ro,noload"),
    "ext4": ("ext4", "ro,noload"),
    "xfs": ("xfs", "ro,norecovery,nouuid"),
    "btrfs": ("btrfs", "ro,rescue=nologreplay"),
    "vfat": ("vfat", "ro"),
    "ntfs": ("ntfs3", "ro"),
}

GPT_TYPES = {
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "linux",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "linux-swap",
    "e6d6d379-f507-44c2-a23c-238f2a3df928": "linux-lvm",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "efi-system",
    "21686148-6449-6e6f-744e-656564454649": "bios-boot",
    "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7": "microsoft-basic-data",
    "4f68bce3-e8cd-4db1-96e7-fbcaf984b709": "linux-root-x86-64",
    "bc13c2ff-59e6-4262-a352-b275fd6f7172": "linux-extended-boot",
    "a19d880f-05fc-4d3b-a006-743f0f84911e": "linux-raid",
}

MBR_TYPES = {
    0x01: "fat12",
    0x06: "fat16",
    0x07: "ntfs/exfat",
    0x0B: "fat32",
    0x0C: "fat32-lba",
    0x0E: "fat16-lba",
    0x82: "linux-swap",
    0x83: "linux",
    0x8E: "linux-lvm",
    0xEF: "efi-system",
    0xFD: "linux-raid",
}


@dataclass(frozen=True)
class Partition:
    """One partition: byte range on the disk, table type label, file system found."""

    number: int
    start: int
    size: int
    type: str
    filesystem: str

    @property
    def mountable(self) -> bool:
        return self.filesystem in MOUNT_OPTIONS


@dataclass(frozen=True)
class DiskLayout:
    """``table`` is "gpt", "mbr" or "none" (a file system on the whole disk: one
    Partition with number 0)."""

    table: str
    partitions: tuple[Partition, ...]


def detect_filesystem(read: Reader, start: int = 0) -> str:
    """Name of the file system (or swap, LVM PV) whose signature starts at `start`."""
    head = read(start, 4096)
    if head[:4] == b"XFSB":
        return "xfs"
    ext = read(start + 1024, 104)
    if len(ext) >= 104 and ext[56:58] == b"\x53\xef":
        return _ext_version(ext)
    if _is_fat_boot_sector(head):
        return "vfat"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    for sector in range(4):
        label = head[sector * SECTOR : sector * SECTOR + 32]
        if label[:8] == b"LABELONE" and label[24:32] == b"LVM2 001":
            return "lvm2-pv"
    if read(start + 0x10040, 8) == b"_BHRfS_M":
        return "btrfs"
    return "unknown"


def _ext_version(sb: bytes) -> str:
    """ext2, ext3 or ext4 from the superblock's feature flags (as blkid decides)."""
    compat, incompat, ro_compat = struct.unpack_from("<III", sb, 92)
    ext4_incompat = 0x40 | 0x80 | 0x200 | 0x400  # extents, 64bit, flex_bg, ea_inode
    ext4_ro_compat = 0x08 | 0x10 | 0x20 | 0x40  # huge_file, gdt_csum, dir_nlink, extra_isize
    if incompat & ext4_incompat or ro_compat & ext4_ro_compat:
        return "ext4"
    if compat & 0x04:  # has_journal
        return "ext3"
    return "ext2"


def _is_fat_boot_sector(sector: bytes) -> bool:
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa" or sector[0] not in (0xEB, 0xE9):
        return False
    return sector[54:59] in (b"FAT12", b"FAT16") or sector[82:87] == b"FAT32"


def read_layout(read: Reader, disk_size: int) -> DiskLayout:
    """The partitions of a disk and the file system in each."""
    read = _clamped(read, disk_size)
    mbr = read(0, SECTOR)
    gpt = _read_gpt(read, disk_size)
    if gpt is not None:
        entries, table = gpt, "gpt"
    elif _is_mbr(mbr):
        entries, table = _read_mbr(read, mbr, disk_size), "mbr"
    else:
        fs = detect_filesystem(read, 0)
        return DiskLayout("none", (Partition(0, 0, disk_size, "-", fs),))
    parts = tuple(
        Partition(number, start, size, kind, detect_filesystem(read, start))
        for number, start, size, kind in entries
    )
    return DiskLayout(table, parts)


def _clamped(read: Reader, disk_size: int) -> Reader:
    """A reader that returns short (or empty) reads past the end of the disk."""

    def clamped(offset: int, length: int) -> bytes:
        if offset >= disk_size:
            return b""
        return read(offset, min(length, disk_size - offset))

    return clamped


def _is_mbr(sector: bytes) -> bool:
    """An MBR, not a FAT boot sector on an unpartitioned disk (both end in 55 aa)."""
    if len(sector) < SECTOR or sector[510:512] != b"\x55\xaa" or _is_fat_boot_sector(sector):
        return False
    entries = [sector[446 + 16 * i : 462 + 16 * i] for i in range(4)]
    return all(e[0] in (0x00, 0x80) for e in entries)


_Entry = tuple[int, int, int, str]  # number, start byte, size bytes, type label


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int]]:
    """(type, start LBA, sectors) of the non-empty entries of an MBR or EBR."""
    found = []
    for i in range(4):
        kind, lba, count = struct.unpack_from("<B3xII", sector, 446 + 16 * i + 4)
        if kind != 0 and count != 0:
            found.append((kind, lba, count))
        else:
            found.append((0, 0, 0))
    return found


def _read_mbr(read: Reader, mbr: bytes, disk_size: int) -> list[_Entry]:
    parts: list[_Entry] = []
    for number, (kind, lba, count) in enumerate(_mbr_entries(mbr), start=1):
        if kind == 0:
            continue
        if kind in _EXTENDED:
            parts.extend(_read_logical(read, lba, disk_size))
            continue
        parts.append((number, lba * SECTOR, count * SECTOR, _mbr_label(kind)))
    return parts


def _read_logical(read: Reader, extended_lba: int, disk_size: int) -> list[_Entry]:
    """Walk the EBR chain: each EBR holds one logical partition (relative to the
    EBR) and a link to the next EBR (relative to the extended partition)."""
    parts: list[_Entry] = []
    ebr_lba = extended_lba
    seen: set[int] = set()
    while len(parts) < _MAX_LOGICAL and ebr_lba not in seen:
        seen.add(ebr_lba)
        ebr = read(ebr_lba * SECTOR, SECTOR)
        if len(ebr) < SECTOR or ebr[510:512] != b"\x55\xaa":
            break
        (kind, lba, count), (next_kind, next_lba, _n), *_rest = _mbr_entries(ebr)
        if kind != 0 and (ebr_lba + lba) * SECTOR < disk_size:
            start = (ebr_lba + lba) * SECTOR
            parts.append((5 + len(parts), start, count * SECTOR, _mbr_label(kind)))
        if next_kind not in _EXTENDED:
            break
        ebr_lba = extended_lba + next_lba
    return parts


def _mbr_label(kind: int) -> str:
    return MBR_TYPES.get(kind, f"0x{kind:02x}")


def _read_gpt(read: Reader, disk_size: int) -> list[_Entry] | None:
    """GPT entries, or None when there is no valid primary GPT header."""
    for sector in (SECTOR, 4096):
        header = read(sector, 92)
        if header[:8] == b"EFI PART":
            return _gpt_entries(read, header, sector, disk_size)
    return None


def _gpt_entries(read: Reader, header: bytes, sector: int, disk_size: int) -> list[_Entry]:
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    if entry_size < 128 or count > 1024:
        return []
    table = read(entries_lba * sector, count * entry_size)
    parts: list[_Entry] = []
    for i in range(count):
        entry = table[i * entry_size : i * entry_size + 128]
        if len(entry) < 128 or entry[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last < first or first * sector >= disk_size:
            continue
        type_guid = str(uuid.UUID(bytes_le=entry[:16]))
        label = GPT_TYPES.get(type_guid, type_guid)
        parts.append((i + 1, first * sector, (last - first + 1) * sector, label))
    return parts
