"""Small disk images with real partition tables and file systems, made by sfdisk/mkfs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

MiB = 1024 * 1024
_CHUNK = MiB


def run(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


def make_fs(path: Path, fstype: str, size: int) -> Path:
    """A file system image of `size` bytes (swap: a swap area)."""
    with open(path, "wb") as f:
        f.truncate(size)
    if fstype == "swap":
        run("mkswap", path)
    elif fstype == "vfat":
        run("mkfs.vfat", path)
    elif fstype == "xfs":
        run("mkfs.xfs", "-q", "-f", path)
    else:
        run(f"mkfs.{fstype}", "-q", "-F", path)
    return path


def partition(disk: Path, size: int, script: str) -> None:
    """A sparse disk image of `size` bytes partitioned by an sfdisk script."""
    with open(disk, "wb") as f:
        f.truncate(size)
    subprocess.run(
        ["sfdisk", "-q", str(disk)], input=script.encode(), check=True, capture_output=True
    )


def place(disk: Path, image: Path, offset: int) -> None:
    """Copy `image` into `disk` at `offset`, leaving zero chunks as holes."""
    with open(image, "rb") as src, open(disk, "r+b") as dst:
        pos = 0
        while chunk := src.read(_CHUNK):
            if chunk.count(0) != len(chunk):
                dst.seek(offset + pos)
                dst.write(chunk)
            pos += len(chunk)


def file_reader(f: BinaryIO) -> Callable[[int, int], bytes]:
    """A read(offset, length) callable over an open image file."""

    def read(offset: int, length: int) -> bytes:
        return os.pread(f.fileno(), length, offset)

    return read


def ext4_with_files(path: Path, size: int, files: dict[str, bytes], label: str) -> Path:
    """An ext4 image holding `files` (mkfs.ext4 -d: no mount needed)."""
    source = path.with_name(path.name + ".d")
    source.mkdir()
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    with open(path, "wb") as f:
        f.truncate(size)
    run("mkfs.ext4", "-q", "-F", "-L", label, "-d", source, path)
    return path


def two_ext4_disk(path: Path, first: dict[str, bytes], second: dict[str, bytes]) -> Path:
    """48 MiB GPT disk: partition 1 (16 MiB) and 2 (24 MiB), each ext4 holding the files."""
    partition(path, 48 * MiB, "label: gpt\nstart=2048, size=16MiB\nsize=24MiB\n")
    place(path, ext4_with_files(path.with_suffix(".p1"), 16 * MiB, first, "one"), 1 * MiB)
    place(path, ext4_with_files(path.with_suffix(".p2"), 24 * MiB, second, "two"), 17 * MiB)
    return path


def changed_frames(new: Path, old: Path | None, block: int = 64 * 1024) -> list:
    """Stream frames turning `old` (None: a blank disk, i.e. a full backup) into `new`:
    data frames for changed non-zero blocks, zero frames for blocks that became zero."""
    frames: list = []
    with open(new, "rb") as fn, open(old, "rb") if old else open(os.devnull, "rb") as fo:
        pos = 0
        while chunk := fn.read(block):
            before = fo.read(block) if old else None
            if old is None or chunk != before:
                if chunk.count(0) == len(chunk):
                    frames.append((pos, len(chunk)))
                else:
                    frames.append((pos, chunk))
            pos += len(chunk)
    return frames
