"""Raw disk images with a partition table and file systems holding given files.

    make_fs_image(tmp / "disk.raw", 64 * MiB, [
        Partition(24 * MiB, "ext4", files={"etc/fstab": b"..."}, label="root"),
        Partition(24 * MiB, "xfs", label="data"),
    ], table="gpt")

Each file system is built in a separate image (ext4: ``mke2fs -d DIR``; xfs:
``mkfs.xfs -p PROTOFILE``, at least 300 MiB: mkfs.xfs refuses less;
vfat: empty) and copied into its partition, holes
skipped, so no loop device or mount is needed. The result feeds
``DiskSpec(image=...)``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.libvirtd import HarnessError

MiB = 1024 * 1024
SECTOR = 512
_CHUNK = MiB


@dataclass(frozen=True)
class Partition:
    """size in bytes (a multiple of 1 MiB); files maps relative paths to contents."""

    size: int
    fstype: str | None = "ext4"  # "ext4", "xfs", "vfat" or None (left empty)
    files: Mapping[str, bytes] = field(default_factory=dict)
    label: str | None = None
    type: str = "linux"  # sfdisk partition type alias (linux, swap, uefi, ...)


def _run(*args: str | Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(map(str, args))} failed: {done.stderr.strip()}")
    return done.stdout


def _populate(root: Path, files: Mapping[str, bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _xfs_protofile(root: Path) -> str:
    """mkfs.xfs -p format: a boot line, block/inode counts, then the tree (see mkfs.xfs(8))."""

    def tree(directory: Path, depth: int) -> list[str]:
        lines = []
        for entry in sorted(directory.iterdir()):
            pad = " " * depth
            if entry.is_dir():
                lines.append(f"{pad}{entry.name} d--755 0 0")
                lines += tree(entry, depth + 1)
                lines.append(f"{pad}$")
            else:
                lines.append(f"{pad}{entry.name} ---644 0 0 {entry}")
        return lines

    return "\n".join(["/dev/null", "0 0", "d--755 0 0", *tree(root, 1), "$", ""])


def make_fs(path: Path, size: int, part: Partition) -> None:
    """Build the file system of one partition in a file of `size` bytes."""
    with open(path, "wb") as f:
        f.truncate(size)
    if part.fstype is None:
        if part.files:
            raise HarnessError("files need a file system")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _populate(root, part.files)
        label = [part.label] if part.label else []
        if part.fstype == "ext4":
            args = ["mke2fs", "-q", "-F", "-t", "ext4", "-d", root]
            _run(*args, *(["-L", *label] if label else []), path)
        elif part.fstype == "xfs":
            proto = Path(tmp) / "proto"
            proto.write_text(_xfs_protofile(root))
            _run("mkfs.xfs", "-q", "-f", "-p", proto, *(["-L", *label] if label else []), path)
        elif part.fstype == "vfat":
            if part.files:
                raise HarnessError("files on vfat are not supported (no mtools)")
            _run("mkfs.vfat", *(["-n", *label] if label else []), path)
        else:
            raise HarnessError(f"file system {part.fstype!r}: ext4, xfs, vfat or None")


def _copy_into(src: Path, dst_fd: int, offset: int) -> None:
    """Copy src into dst at offset in pieces, skipping all-zero pieces (dst is sparse)."""
    with open(src, "rb") as f:
        pos = 0
        while piece := f.read(_CHUNK):
            if piece.count(0) != len(piece):
                os.pwrite(dst_fd, piece, offset + pos)
            pos += len(piece)


def make_fs_image(
    path: Path,
    size: int,
    partitions: Sequence[Partition],
    table: str = "gpt",
) -> list[tuple[int, int]]:
    """Write a raw disk image at `path`; returns each partition's (offset, size) in bytes."""
    if table not in ("gpt", "dos"):
        raise HarnessError(f"partition table {table!r}: gpt or dos")
    if shutil.which("sfdisk") is None:
        raise HarnessError("sfdisk is missing (package fdisk)")
    with open(path, "wb") as f:
        f.truncate(size)
    script = [f"label: {table}"]
    for part in partitions:
        if part.size % MiB:
            raise HarnessError(f"partition size {part.size} is not a multiple of 1 MiB")
        script.append(f"size={part.size // SECTOR}, type={part.type}")
    _run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path, stdin="\n".join(script))
    layout = json.loads(_run("sfdisk", "--json", path))["partitiontable"]["partitions"]
    placed = [(p["start"] * SECTOR, p["size"] * SECTOR) for p in layout]
    fd = os.open(path, os.O_RDWR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (part, (offset, length)) in enumerate(zip(partitions, placed, strict=True)):
                fs = Path(tmp) / f"part{i}.img"
                make_fs(fs, length, part)
                _copy_into(fs, fd, offset)
                fs.unlink()
    finally:
        os.close(fd)
    return placed
