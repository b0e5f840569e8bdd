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
