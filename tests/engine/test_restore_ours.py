"""restore and verify on chains made by vbbackup's own backup engine from a live VM.

Two qcow2 disks and a raw one (saved whole by the full with ``raw=True``, as a
``copy`` stream); full, two incrementals and a differential with random writes
and discards; uncompressed and lz4. Every point is restored, all disks and one,
qcow2 and raw, and compared with the harness's expected images.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.harness.backup import cp
from tests.harness.compare import assert_identical
from tests.harness.fixtures import require
from tests.harness.vm import DiskSpec, TestVM
from vbbackup.engine.backup import BackupConfig, run_backup
from vbbackup.engine.restore import RestoreConfig, restore
from vbbackup.engine.verify import VerifyConfig, verify
from vbbackup.errors import TargetExistsError

pytestmark = pytest.mark.integration
MiB = 1024 * 1024
LEVELS = ["full", "inc", "inc", "diff"]
Points = list[tuple[str, dict[str, Path]]]


@pytest.fixture(scope="module")
def vm(libvirt_conn: Any) -> Iterator[TestVM]:
    require("nbdkit_python", "libnbd_python")
    disks = [DiskSpec("vda", 32 * MiB), DiskSpec("vdb", 16 * MiB), DiskSpec("vdc", 8 * MiB, "raw")]
    with TestVM(libvirt_conn, disks) as test_vm:
        yield test_vm


@pytest.fixture(scope="module", params=[None, 2], ids=["plain", "lz4"])
def chain(
    request: pytest.FixtureRequest, vm: TestVM, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Points, Path]:
    """The set, per point the expected images of vda and vdb, and vdc's at the full."""
    out = tmp_path_factory.mktemp("ours") / "set"
    rng = random.Random(5 if request.param else 6)
    points: Points = []
    vdc_at_full = None
    for k, level in enumerate(LEVELS):
        for target in ("vda", "vdb", "vdc"):
            size = vm.disk_size(target)
            for _ in range(3):
                length = rng.choice([512, 4096, 70000, MiB])
                vm.write(target, rng.randrange(0, size - length), rng.randbytes(length))
        if k:
            vm.discard("vda", rng.randrange(0, 30) * MiB, MiB)
        run_backup(
            BackupConfig(
                domain=vm.name,
                level=level,
                output=out,
                compress=request.param,
                raw=True,
                scratch_dir=vm.dir,
            )
        )
        name = cp(out, k) if level != "diff" else "diff." + _diff_ident(out)
        points.append((name, {t: vm.expected(t) for t in ("vda", "vdb")}))
        if level == "full":
            vdc_at_full = vm.expected("vdc")
    assert vdc_at_full is not None
    return out, points, vdc_at_full


def _diff_ident(out: Path) -> str:
    (diff,) = out.glob("vda.diff.*.data")
    return diff.name.split(".")[2]


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_every_point_all_disks(chain: tuple[Path, Points, Path], tmp_path: Path, fmt: str) -> None:
    out, points, vdc_at_full = chain
    for name, expected in points:
        target = tmp_path / name
        result = restore(RestoreConfig(out, target, until=name, fmt=fmt))
        images = {d.disk: d.image for d in result.disks}
        assert sorted(images) == ["vda", "vdb", "vdc"]
        for disk in ("vda", "vdb"):
            assert_identical(images[disk], expected[disk], fmt)
        assert_identical(images["vdc"], vdc_at_full, fmt)  # a copy: the same at every point


def test_one_disk_in_its_own_format(chain: tuple[Path, Points, Path], tmp_path: Path) -> None:
    out, points, vdc_at_full = chain
    result = restore(RestoreConfig(out, tmp_path / "one", until=points[1][0], disks=("vdb",)))
    (disk,) = result.disks
    assert disk.image == tmp_path / "one" / "vdb.qcow2"
    assert_identical(disk.image, points[1][1]["vdb"], "qcow2")
    raw = restore(RestoreConfig(out, tmp_path / "raw", disks=("vdc",)))
    assert raw.disks[0].image == tmp_path / "raw" / "vdc.raw"
    assert_identical(raw.disks[0].image, vdc_at_full, "raw")


def test_verify_is_sound_with_checksums(chain: tuple[Path, Points, Path]) -> None:
    out, _, _ = chain
    report = verify(VerifyConfig(out))
    assert report.sound, [str(p) for p in report.problems]
    assert report.warnings == []
    assert {f.checksum for f in report.files} == {"ok"}
    assert len(report.files) == 9  # vda: full, 2 incs, diff; vdb the same; vdc: copy


def test_defined_domain_keeps_the_backed_up_raw_disk_and_starts(
    chain: tuple[Path, Points, Path], vm: TestVM, libvirt_conn: Any, tmp_path: Path
) -> None:
    out, points, _ = chain
    target = Path(vm.dir) / f"restored-{tmp_path.name}"
    name = f"{vm.name}-r"
    try:
        result = restore(RestoreConfig(out, target, define=True, name=name))
        dom = libvirt_conn.lookupByName(name)
        xml = dom.XMLDesc()
        for image in ("vda.qcow2", "vdb.qcow2", "vdc.raw"):
            assert f"{target}/{image}" in xml
        assert result.config == target / f"{name}.xml"
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        assert dom.isActive()
        dom.destroy()
        before = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}
        again = RestoreConfig(out, target, define=True, name=name, force=True)
        with pytest.raises(TargetExistsError, match=f"a domain named '{name}' exists already"):
            restore(again)  # refused before a byte is written
        assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == before
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            libvirt_conn.lookupByName(name).undefine()
    assert_identical(target / "vda.qcow2", points[-1][1]["vda"], "qcow2")


def test_the_raw_disk_is_served_at_every_point(
    chain: tuple[Path, Points, Path], tmp_path: Path
) -> None:  # noqa: E501
    """``--raw``: vdc is one copy in a chain directory; every point of the chain serves it."""
    from vbbackup.engine.copyout import Export, copy_out

    out, points, vdc_at_full = chain
    for name, _ in points:
        image = tmp_path / f"vdc.{name}.raw"
        copy_out(Export(out, "vdc", name), image, "raw")
        assert_identical(image, vdc_at_full, "raw")
