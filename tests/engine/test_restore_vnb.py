"""restore, verify and info on chains made by Debian's real virtnbdbackup from a live VM.

One VM with two qcow2 disks (backed up) and a raw disk (virtnbdbackup leaves raw
disks out); full, two incrementals and a differential, with writes, overwrites,
discards and unaligned bytes in between. Every point is restored, qcow2 and
raw, all disks and one, and compared with the harness's expected images.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner

from tests.harness.compare import assert_identical
from tests.harness.fixtures import require
from tests.harness.vm import DiskSpec, TestVM
from tests.integration.vnb_sets import (
    MiB,
    apply_ops,
    default_steps,
    run_virtnbdbackup,
    wait_job_end,
)
from vbbackup.cli import main
from vbbackup.engine.restore import RestoreConfig, restore
from vbbackup.engine.verify import VerifyConfig, verify

pytestmark = pytest.mark.integration
LEVELS = ["full", "inc", "inc", "diff"]
VDB_STEPS = [
    [("write", 0, 2 * MiB, 0xA1), ("write", 9 * MiB, 4096, 0xA2)],
    [("discard", 0, MiB)],
    [],
    [("write", 12 * MiB + 512, 70000, 0xA3)],
]
Points = list[tuple[str, dict[str, Path]]]


@pytest.fixture(scope="module")
def vnb_vm(libvirt_conn: Any) -> Iterator[TestVM]:
    require("virtnbdbackup", "nbdkit_python")
    disks = [DiskSpec("vda", 32 * MiB), DiskSpec("vdb", 16 * MiB), DiskSpec("vdc", 16 * MiB, "raw")]
    with TestVM(libvirt_conn, disks) as vm:
        vm.write_pattern("vdc", 0, MiB, 0xC1)
        yield vm


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "lz4"])
def vnb_chain(
    request: pytest.FixtureRequest, vnb_vm: TestVM, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Points]:
    """The set and, per point, the expected raw image of vda and vdb."""
    outdir = tmp_path_factory.mktemp("vnb") / "set"
    steps = default_steps(vnb_vm.disk_size("vda"))
    steps.append([("write", 3 * MiB, MiB, 0x77)])
    points: Points = []
    n = 0
    for level, vda_ops, vdb_ops in zip(LEVELS, steps, VDB_STEPS, strict=True):
        apply_ops(vnb_vm, "vda", vda_ops)
        apply_ops(vnb_vm, "vdb", vdb_ops)
        before = set(outdir.glob("vda.diff.*.data")) if outdir.exists() else set()
        wait_job_end(vnb_vm)
        run_virtnbdbackup(vnb_vm, outdir, level, compress=request.param)
        if level == "diff":
            (new,) = set(outdir.glob("vda.diff.*.data")) - before
            name = "diff." + new.name.split(".")[2]
        else:
            name, n = f"virtnbdbackup.{n}", n + 1
        points.append((name, {t: vnb_vm.expected(t) for t in ("vda", "vdb")}))
    return outdir, points


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_every_point_all_disks(vnb_chain: tuple[Path, Points], tmp_path: Path, fmt: str) -> None:
    outdir, points = vnb_chain
    for name, expected in points:
        out = tmp_path / name
        result = restore(RestoreConfig(outdir, out, until=name, fmt=fmt))
        assert sorted(d.disk for d in result.disks) == ["vda", "vdb"]  # vdc: raw, not saved
        for disk in result.disks:
            assert disk.image == out / f"{disk.disk}.{fmt}"
            assert_identical(disk.image, expected[disk.disk], fmt)


def test_one_disk_newest_point_via_cli(vnb_chain: tuple[Path, Points], tmp_path: Path) -> None:
    outdir, points = vnb_chain
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["restore", str(outdir), "-o", str(out), "--disk", "vdb"])
    assert run.exit_code == 0, run.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("restore.")) == [
        "vdb.qcow2",
        f"vmconfig.{points[-1][0][5:]}.xml",
    ]
    assert_identical(out / "vdb.qcow2", points[-1][1]["vdb"], "qcow2")
    again = CliRunner().invoke(main, ["restore", str(outdir), "-o", str(out), "--disk", "vdb"])
    assert again.exit_code == 5
    assert "already exists; refusing to overwrite it (--force)" in again.output


def test_verify_and_info(vnb_chain: tuple[Path, Points], tmp_path: Path) -> None:
    outdir, points = vnb_chain
    report = verify(VerifyConfig(outdir))
    assert report.sound, [str(p) for p in report.problems]
    assert len(report.files) == 8
    assert all("no checksum file" in w for w in report.warnings)
    run = CliRunner().invoke(main, ["info", str(outdir), "--json"])
    assert run.exit_code == 0, run.output
    assert f'"name": "{points[-1][0]}"' in run.output


def test_adjusted_config_passes_virsh_define_and_starts(
    vnb_chain: tuple[Path, Points], vnb_vm: TestVM, tmp_path: Path, libvirt_conn: Any
) -> None:
    outdir, points = vnb_chain
    out = Path(vnb_vm.dir) / f"restored-{tmp_path.name}"  # QEMU must reach the images
    name = f"{vnb_vm.name}-restored"
    result = restore(RestoreConfig(outdir, out, until=points[1][0], adjust_config=True, name=name))
    assert result.defined is None and result.config == out / f"{name}.xml"
    text = result.config.read_text()
    assert "<uuid>" not in text and f"<name>{name}</name>" in text
    try:
        done = subprocess.run(
            ["virsh", "-c", "qemu:///system", "define", str(result.config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        dom = libvirt_conn.lookupByName(name)
        xml = dom.XMLDesc()
        assert dom.UUIDString() != vnb_vm.dom.UUIDString()
        assert f"{out}/vda.qcow2" in xml and f"{out}/vdb.qcow2" in xml
        assert "vdc" not in xml and vnb_vm.dir.name + "/vda" not in xml  # raw vdc: not saved
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        assert dom.isActive()
        dom.destroy()
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            libvirt_conn.lookupByName(name).undefine()
    assert_identical(out / "vda.qcow2", points[1][1]["vda"], "qcow2")


def test_verify_catches_damage_in_a_real_set(
    vnb_chain: tuple[Path, Points], tmp_path: Path
) -> None:
    outdir, _ = vnb_chain
    damaged = tmp_path / "set"
    shutil.copytree(outdir, damaged)
    full = damaged / "vda.full.data"
    inc1 = damaged / "vda.inc.virtnbdbackup.1.data"
    with open(inc1, "r+b") as f:
        f.truncate(inc1.stat().st_size - 100)
    (damaged / "vda.inc.virtnbdbackup.2.data").unlink()
    data = bytearray(full.read_bytes())
    header = data.index(b"data 0000")
    # lz4: a byte inside the first data frame's payload; plain: its header's kind
    position = header + 40 + 100 if b'"compressed": false' not in data[:600] else header + 1
    data[position] ^= 0x01
    full.write_bytes(bytes(data))
    problems = [str(p) for p in verify(VerifyConfig(damaged)).problems]
    assert any(p.startswith(f"{full}: at byte ") for p in problems), problems
    assert any(p.startswith(f"{inc1}: at byte ") for p in problems), problems
    assert (
        f"{damaged}/vda.inc.virtnbdbackup.2.data: missing incremental (checkpoint virtnbdbackup.2)"
        in problems
    )
    assert not [p for p in problems if "/vdb." in p]  # vdb is untouched
