"""Fixtures for vbmount: a two-point backup set of a GPT disk with two ext4 partitions,
written straight from images (no VM), and an isolated vbmount state directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.fixtures import require
from tests.vbmount.images import two_ext4_disk
from tests.vbmount.sets import write_set

OLD = ({"etc/fstab": b"old fstab\n"}, {"data.txt": b"old data\n"})
NEW = ({"etc/fstab": b"new fstab\n"}, {"data.txt": b"new data\n", "extra.bin": b"x" * 100_000})


@dataclass(frozen=True)
class TwoPointSet:
    directory: Path
    images: list[Path]  # raw image of each point
    points: list[str]  # checkpoint names


@pytest.fixture(scope="session")
def two_point_set(tmp_path_factory: pytest.TempPathFactory) -> TwoPointSet:
    """Point 0: OLD files; point 1: NEW files; partition 1's journal marked dirty at point 1."""
    root = tmp_path_factory.mktemp("vbmount-set")
    old = two_ext4_disk(root / "old.raw", *OLD)
    new = two_ext4_disk(root / "new.raw", *NEW)
    mark_journal_dirty(new, 1024 * 1024, 16 * 1024 * 1024, root)
    points = write_set(root / "set", [old, new])
    return TwoPointSet(root / "set", [old, new], points)


def mark_journal_dirty(disk: Path, offset: int, size: int, tmp: Path) -> None:
    """Set ext4's needs_recovery flag: a plain read-only mount would have to replay."""
    part = tmp / "dirty.p"
    with open(disk, "rb") as src, open(part, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(size))
    subprocess.run(
        ["debugfs", "-w", "-R", "feature needs_recovery", str(part)],
        check=True,
        capture_output=True,
    )
    with open(part, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(offset)
        dst.write(src.read())
    part.unlink()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private /run/vbmount for the test."""
    path = tmp_path / "state"
    monkeypatch.setenv("VBMOUNT_STATE", str(path))
    return path


@pytest.fixture
def mount_capable() -> None:
    require("nbdkit", "nbdkit_python", "nbdfuse", "fuse")
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("mounting needs root and losetup")


def leftovers(*roots: Path) -> list[str]:
    """Mounts, loop devices and live processes that still refer to paths below `roots`."""
    names = tuple(str(r) for r in roots)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if point.startswith(names):
                found.append(f"mount {point}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().startswith(names):
            found.append(f"loop {backing.parts[3]}")
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (cmdline.parent / "stat").read_text()
        except OSError:
            continue
        if any(n in text for n in names) and stat.rsplit(")", 1)[-1].split()[0] != "Z":
            found.append(f"process {cmdline.parent.name}: {text}")
    return found


@pytest.fixture
def cleanup_mounts(state_dir: Path) -> Iterator[list[Path]]:
    """Mount points a test used; umounted after the test even when it failed."""
    from vbmount.mounting import umount_backup

    used: list[Path] = []
    yield used
    for mountpoint in used:
        umount_backup(mountpoint)
