"""restore --target vda=/dev/...: a disk written over an existing block device (a loop
device here): every byte of the disk, holes as zeroes, nothing beyond it touched."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.chain.chains import write_chain
from tests.harness.fixtures import require
from vbbackup.cli import main

KiB = 1024
MiB = 1024 * KiB
SIZE = 4 * MiB
STEPS = [
    [(0, b"A" * 512 * KiB), (512 * KiB, SIZE - 512 * KiB)],
    [(64 * KiB, b"B" * 8 * KiB), (2 * MiB, b"C" * 64 * KiB)],
]
pytestmark = pytest.mark.integration


def run(*args: str | Path) -> Result:
    return CliRunner(mix_stderr=False).invoke(main, [str(a) for a in args], prog_name="vbbackup")


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    require("nbdkit", "nbdkit_python", "qemu")
    directory = tmp_path / "set"
    write_chain(directory, SIZE, STEPS)
    return directory


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[object]:
    """``loop(size)``: a loop device over a file of ``size`` bytes of 0xFF (old data)."""
    made: list[str] = []

    def make(size: int) -> Path:
        backing = tmp_path / f"dev{len(made)}.img"
        backing.write_bytes(b"\xff" * size)
        done = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                              text=True, check=True)  # fmt: skip
        made.append(done.stdout.strip())
        return Path(made[-1])

    yield make
    for device in made:
        subprocess.run(["losetup", "-d", device], check=False)


def test_a_disk_restored_onto_a_device(chain: Path, tmp_path: Path, loop: object) -> None:
    device = loop(6 * MiB)  # type: ignore[operator]
    result = run("restore", chain, "-o", tmp_path / "out", "--target", f"vda={device}",
                 "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    reference = run("restore", chain, "-o", tmp_path / "ref", "--format", "raw", "--no-progress")
    assert reference.exit_code == 0, reference.stderr
    with open(device, "rb") as f:
        written = f.read(SIZE)
        beyond = f.read()
    assert written == (tmp_path / "ref" / "vda.raw").read_bytes()
    assert written[SIZE - 4096 :] == bytes(4096)  # a hole of the backup: zeroes, not 0xFF
    assert beyond == b"\xff" * 2 * MiB  # past the disk: left alone
    assert not any(p.name.startswith("vda") for p in (tmp_path / "out").iterdir())


def test_a_device_too_small_or_not_a_device_is_refused(
    chain: Path, tmp_path: Path, loop: object
) -> None:
    small = loop(2 * MiB)  # type: ignore[operator]
    result = run("restore", chain, "-o", tmp_path / "out", "--target", f"vda={small}")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"vbbackup: error: --target {small} holds {2 * MiB} bytes, the disk needs {SIZE}: a "
        "device at least the disk's virtual size"
    )
    with open(small, "rb") as f:
        assert f.read() == b"\xff" * 2 * MiB  # nothing written
    plain = tmp_path / "file.img"
    plain.write_bytes(b"")
    result = run("restore", chain, "-o", tmp_path / "out", "--target", f"vda={plain}")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"vbbackup: error: --target {plain} is not a block device (give -o for image files)"
    )
    result = run("restore", chain, "-o", tmp_path / "out", "--target", "vdz=/dev/null")
    assert result.exit_code == 2
    assert (
        result.stderr.strip() == "vbbackup: error: --target vdz: no such disk in this restore (vda)"
    )


def test_a_mounted_device_is_refused(chain: Path, tmp_path: Path, loop: object) -> None:
    device = loop(8 * MiB)  # type: ignore[operator]
    subprocess.run(["mkfs.ext4", "-q", "-F", str(device)], check=True)
    where = tmp_path / "mnt"
    where.mkdir()
    subprocess.run(["mount", str(device), str(where)], check=True)
    try:
        result = run("restore", chain, "-o", tmp_path / "out", "--target", f"vda={device}")
        assert result.exit_code == 5
        assert result.stderr.strip() == (
            f"vbbackup: error: --target {device} is in use (Device or resource busy): "
            "mounted, or a member of a volume group or device-mapper table"
        )
    finally:
        subprocess.run(["umount", str(where)], check=True)
