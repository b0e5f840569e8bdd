"""Guest disk images built through libguestfs itself (partitions, LVM, file systems, files),
and the blocks that differ between two images (to replay a change into a live test disk).

    build_images({"vda": 512 * MiB, "vdb": 192 * MiB}, script, out_dir)  -> {"vda": path, ...}
    edit_images(images, script)   # a change to existing images
    changed_ranges(old, new)  -> [(offset, bytes), ...]

``script(g)`` gets a launched, writable guestfs handle over the raw images (sda,
sdb, ... in the order given) and does what guestfish would.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vbbackup.gfs.appliance import backend_settings

BLOCK = 64 * 1024


def build_images(
    sizes: dict[str, int], script: Callable[[Any], None], out_dir: Path
) -> dict[str, Path]:
    """New sparse raw images of these sizes, then ``script`` over them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for target, size in sizes.items():
        paths[target] = out_dir / f"{target}.raw"
        with open(paths[target], "wb") as f:
            f.truncate(size)
    edit_images(paths, script)
    return paths


def edit_images(images: dict[str, Path], script: Callable[[Any], None]) -> None:
    """``script(g)`` over existing raw images (sda, sdb, ... in order), written back."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    settings = backend_settings(lambda line: None)
    if settings:
        g.set_backend_settings(settings)
    for path in images.values():
        g.add_drive_opts(str(path), format="raw", readonly=False)
    g.launch()
    try:
        script(g)
        g.umount_all()
        g.sync()
        g.shutdown()
    finally:
        g.close()


def copy_images(images: dict[str, Path], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    copies = {}
    for target, path in images.items():
        copies[target] = out_dir / path.name
        subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(path),
                        str(copies[target])], check=True)  # fmt: skip
    return copies


def changed_ranges(old: Path, new: Path) -> Iterator[tuple[int, bytes]]:
    """Every BLOCK-sized piece of ``new`` that differs from ``old`` (same size); only the
    data of either file is read (holes in both are equal)."""
    with open(old, "rb") as a, open(new, "rb") as b:
        for start, end in _data_ranges(a.fileno(), b.fileno()):
            offset = start - start % BLOCK
            while offset < end:
                x, y = os.pread(a.fileno(), BLOCK, offset), os.pread(b.fileno(), BLOCK, offset)
                if x != y:
                    yield offset, y
                offset += BLOCK


def _data_ranges(*fds: int) -> list[tuple[int, int]]:
    """The union of the files' data ranges (SEEK_DATA/SEEK_HOLE), sorted and merged."""
    ranges = []
    for fd in fds:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            ranges.append((start, end))
            pos = end
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
