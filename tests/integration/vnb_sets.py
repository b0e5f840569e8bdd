"""Backup sets made by Debian's real virtnbdbackup (or by vbbackup) on a harness VM.

    steps = default_steps(vm.disk_size("vda"))
    points = make_virtnbdbackup_chain(vm, tmp_path / "set", compress=True,
                                      writes_per_step=steps)
    # [("virtnbdbackup.0", expected_0.raw), ("virtnbdbackup.1", ...), ...]
    points = make_vbbackup_chain(vm, tmp_path / "ours", compress=False,
                                 writes_per_step=steps)

Step k's writes go into the live disk, then virtnbdbackup runs at level
``levels[k]`` (full, then inc; "diff" for a differential), then the harness's
mirror is snapshotted: that snapshot is what the point must read back as.
Point names are those ``vbbackup.chain`` uses (a differential is
``diff.<unix time>``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import libvirt

from tests.harness.vm import TestVM

MiB = 1024 * 1024

# ("write", offset, length, byte) or ("discard", offset, length)
Op = tuple[str, int, int] | tuple[str, int, int, int]


class VnbError(RuntimeError):
    """virtnbdbackup failed; carries its log tail."""


def default_steps(size: int) -> list[list[Op]]:
    """Full + two incrementals over a disk of ``size`` (>= 16 MiB): writes, overwrites,
    a discard, unaligned bytes, and a last quarter never written (a hole)."""
    q = size // 4
    return [
        [("write", 0, MiB, 0x11), ("write", q, 2 * MiB, 0x22), ("write", 2 * q - 4096, 8192, 0x33)],
        [("write", 64 * 1024, 4096, 0x44), ("discard", q, MiB), ("write", 2 * q + 5, 3000, 0x55)],
        [("write", q + 512 * 1024, MiB, 0x66), ("discard", 0, 64 * 1024)],
    ]


def apply_ops(vm: TestVM, target: str, ops: Sequence[Op]) -> None:
    for op in ops:
        if op[0] == "write" and len(op) == 4:
            vm.write_pattern(target, op[1], op[2], op[3])
        elif op[0] == "discard":
            vm.discard(target, op[1], op[2])
        else:
            raise ValueError(f"unknown step op {op!r}")


def wait_job_end(vm: TestVM, timeout: float = 30.0) -> None:
    """libvirt may still be tearing the backup job down when the tool exits;
    the next run would see an active job and refuse."""
    if vm.dom is None:
        return
    deadline = time.monotonic() + timeout
    while vm.dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        if time.monotonic() > deadline:
            raise VnbError(f"{vm.name}: backup job still active after {timeout:.0f} s")
        time.sleep(0.05)


def run_virtnbdbackup(vm: TestVM, outdir: Path, level: str, *, compress: bool) -> None:
    """One virtnbdbackup run; socket and scratch files live in the VM's directory,
    which QEMU (user libvirt-qemu) can write."""
    argv = [
        "virtnbdbackup", "-d", vm.name, "-l", level, "-o", str(outdir), "-n",
        "-S", str(vm.dir), "-f", str(vm.dir / "virtnbdbackup.sock"),
    ]  # fmt: skip
    if compress:
        argv.append("-z")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise VnbError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")


VNB_247 = Path("/var/tmp/vnb-2.47/bin")  # virtnbdbackup 2.47, installed by scripts/setup.sh


def run_virtnbdrestore(
    directory: Path, out: Path, *args: str, tool: str = "virtnbdrestore"
) -> None:
    """``virtnbdrestore -i DIRECTORY -o OUT ARGS...`` (``tool``: another build's binary)."""
    argv = [tool, "-i", str(directory), "-o", str(out), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise VnbError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")


def run_vbbackup(vm: TestVM, outdir: Path, level: str, *, compress: bool) -> None:
    """One ``vbbackup LEVEL`` run (the project's CLI from the same venv)."""
    argv = [
        sys.executable, "-c", "from vbbackup.cli import main; main()",
        level, vm.name, "-o", str(outdir),
        "--scratchdir", str(vm.dir), "--no-progress", "-q",
    ]  # fmt: skip
    if compress:
        argv.append("--compress")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise VnbError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")


def make_virtnbdbackup_chain(
    vm: TestVM,
    outdir: Path,
    *,
    compress: bool,
    writes_per_step: Sequence[Sequence[Op]],
    levels: Sequence[str] | None = None,
    target: str = "vda",
) -> list[tuple[str, Path]]:
    """Write, back up with virtnbdbackup, snapshot the expected image; once per step."""
    return _make_chain(run_virtnbdbackup, vm, outdir, compress, writes_per_step, levels, target)


def make_vbbackup_chain(
    vm: TestVM,
    outdir: Path,
    *,
    compress: bool,
    writes_per_step: Sequence[Sequence[Op]],
    levels: Sequence[str] | None = None,
    target: str = "vda",
) -> list[tuple[str, Path]]:
    """The same with ``vbbackup full/inc/diff``."""
    return _make_chain(run_vbbackup, vm, outdir, compress, writes_per_step, levels, target)


def _make_chain(
    run: Callable[..., None],
    vm: TestVM,
    outdir: Path,
    compress: bool,
    writes_per_step: Sequence[Sequence[Op]],
    levels: Sequence[str] | None,
    target: str,
) -> list[tuple[str, Path]]:
    levels = list(levels or ["full"] + ["inc"] * (len(writes_per_step) - 1))
    if len(levels) != len(writes_per_step) or levels[0] != "full":
        raise ValueError("one level per step, starting with full")
    points: list[tuple[str, Path]] = []
    n_checkpoints = 0
    for ops, level in zip(writes_per_step, levels, strict=True):
        apply_ops(vm, target, ops)
        before = set(outdir.glob(f"{target}.diff.*.data")) if outdir.exists() else set()
        wait_job_end(vm)  # an earlier backup of this VM (ours or the caller's) is over
        run(vm, outdir, level, compress=compress)
        wait_job_end(vm)  # before the next step's writes
        if level == "diff":
            (new,) = set(outdir.glob(f"{target}.diff.*.data")) - before
            name = "diff." + new.name.split(".")[2]
        else:  # virtnbdbackup.N, or vbbackup.<chain id>.N: the name the set recorded
            (cpt,) = outdir.glob("*.cpt")
            name = json.loads(cpt.read_text())[n_checkpoints]
            n_checkpoints += 1
        points.append((name, vm.expected(target)))
    return points
