"""The backup engine against real libvirtd/QEMU: every checkpoint reconstructs exactly.

Streams are applied with the chain library (vbbackup.chain.open_view) into a raw
file, which ``qemu-img compare`` checks against the harness's expected image.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import libvirt
import pytest

from tests.harness.backup import cp
from tests.harness.compare import assert_identical
from tests.harness.vm import DiskSpec, TestVM
from vbbackup.chain import open_view
from vbbackup.engine.backup import BackupConfig, BackupResult, run_backup
from vbbackup.format import read_index

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def backup(vm: TestVM, level: str, out: Path, **kw: object) -> BackupResult:
    return run_backup(BackupConfig(domain=vm.name, level=level, output=out, **kw))  # type: ignore[arg-type]


def reconstruct(files: list[Path], size: int, dest: Path) -> Path:
    """Apply the streams in order into a sparse raw file (only data runs are written)."""
    with open_view(files[0].parent, files=files) as view, open(dest, "wb") as f:
        f.truncate(size)
        for off, length, zero in view.extents(0, size):
            if zero:
                continue
            for pos in range(off, off + length, 8 * MiB):
                n = min(8 * MiB, off + length - pos)
                f.seek(pos)
                f.write(view.read(pos, n))
    return dest


def random_writes(vm: TestVM, rng: random.Random, target: str, count: int) -> None:
    size = vm.disk_size(target)
    for _ in range(count):
        length = rng.choice([512, 4096, 65536, 300_000, 2 * MiB])
        offset = rng.randrange(0, size - length)
        vm.write(target, offset, rng.randbytes(length))


def meta(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        return read_index(f, str(path)).meta


@pytest.mark.parametrize("compress", [None, 2], ids=["plain", "lz4"])
def test_chain_reconstructs_every_checkpoint(make_vm, tmp_path: Path, compress) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    disks = [
        DiskSpec("vda", 48 * MiB),
        DiskSpec("vdb", 16 * MiB),
        DiskSpec("vdc", 8 * MiB, fmt="raw"),
    ]
    vm = make_vm(disks=disks, cdrom=True)
    out = tmp_path / "set"
    vm.write_pattern("vda", 0, 5 * MiB, 0x41)
    vm.write_pattern("vdb", 3 * MiB, 1 * MiB, 0x42)
    vm.write_pattern("vdc", 1 * MiB, 1 * MiB, 0x43)
    expected = {}

    result = backup(vm, "full", out, compress=compress)
    assert [d.target for d in result.disks] == ["vda", "vdb"]
    assert set(result.skipped) == {"vdc", "hdc"}
    assert re.fullmatch(r"vbbackup\.[0-9a-f]{8}\.0", result.checkpoint or "")
    chain = result.checkpoint.rsplit(".", 1)[0]
    expected[result.checkpoint] = {t: vm.expected(t) for t in ("vda", "vdb")}

    for n in (1, 2, 3):
        random_writes(vm, rng, "vda", 6)
        random_writes(vm, rng, "vdb", 2)
        if n == 2:  # written, then discarded between two backups: must come back as zero
            vm.discard("vda", 0, 4 * MiB)
            vm.discard("vdb", 3 * MiB, 512 * 1024)
        result = backup(vm, "inc", out, compress=compress)
        assert result.checkpoint == f"{chain}.{n}"
        expected[result.checkpoint] = {t: vm.expected(t) for t in ("vda", "vdb")}

    random_writes(vm, rng, "vda", 3)
    diff = backup(vm, "diff", out, compress=compress)
    assert diff.checkpoint is None
    expected_diff = {t: vm.expected(t) for t in ("vda", "vdb")}

    assert json.loads((out / f"{vm.name}.cpt").read_text()) == [f"{chain}.{n}" for n in range(4)]
    for n in range(4):
        assert (out / "checkpoints" / f"{chain}.{n}.xml").exists()
        assert (out / f"vmconfig.{chain}.{n}.xml").exists()
    assert (out / f"vda.{chain}.0.qcow.json").exists()
    assert list(out.glob("backup.full.*.log"))
    assert not list(out.glob("*.partial"))
    names = [cp.getName() for cp in vm.dom.listAllCheckpoints()]
    assert sorted(names) == [f"{chain}.{n}" for n in range(4)]

    for target in ("vda", "vdb"):
        size = vm.disk_size(target)
        files = [out / f"{target}.full.data"]
        for n in range(4):
            if n:
                files.append(out / f"{target}.inc.{chain}.{n}.data")
            got = reconstruct(files, size, tmp_path / f"{target}.{n}.raw")
            assert_identical(got, expected[f"{chain}.{n}"][target], fmt="raw")
        diff_file = Path(next(d.path for d in diff.disks if d.target == target))
        got = reconstruct([*files, diff_file], size, tmp_path / f"{target}.diff.raw")
        assert_identical(got, expected_diff[target], fmt="raw")
        m = meta(diff_file)
        assert (m.checkpoint_name, m.parent_checkpoint, m.incremental) == (
            f"{chain}.4", f"{chain}.3", True,
        )  # fmt: skip
        assert bool(m.compressed) == bool(compress)


def test_copy_and_raw_and_include(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB), DiskSpec("vdb", 8 * MiB, fmt="raw")])
    vm.write_pattern("vda", 1 * MiB, 1 * MiB, 0x11)
    vm.write_pattern("vdb", 2 * MiB, 1 * MiB, 0x22)
    result = backup(vm, "copy", tmp_path / "copy", raw=True)
    assert {d.target: Path(d.path).name for d in result.disks} == {
        "vda": "vda.copy.data", "vdb": "vdb.copy.data",
    }  # fmt: skip
    assert vm.dom.listAllCheckpoints() == []
    for target in ("vda", "vdb"):
        got = reconstruct([tmp_path / "copy" / f"{target}.copy.data"], vm.disk_size(target),
                          tmp_path / f"{target}.raw")  # fmt: skip
        assert_identical(got, vm.expected(target), fmt="raw")
    only = backup(vm, "full", tmp_path / "only", include=("vda",))
    assert [d.target for d in only.disks] == ["vda"]
    assert only.skipped["vdb"] == "not included"


def test_auto_starts_a_chain_then_continues_it(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    out = tmp_path / "2026-11"
    assert backup(vm, "auto", out).level == "full"
    vm.write_pattern("vda", 0, 64 * 1024, 0x5A)
    second = backup(vm, "auto", out)
    assert second.level == "inc"
    assert second.disks[0].data_bytes == 64 * 1024
    files = [out / "vda.full.data", out / f"vda.inc.{cp(out, 1)}.data"]
    got = reconstruct(files, 16 * MiB, tmp_path / "a.raw")
    assert_identical(got, vm.expected("vda"), fmt="raw")


def test_no_sparse_detection_writes_discarded_ranges_as_data(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    vm.write_pattern("vda", 0, 2 * MiB, 0x77)
    out = tmp_path / "set"
    backup(vm, "full", out)
    vm.discard("vda", 0, 1 * MiB)
    result = backup(vm, "inc", out, sparse_detection=False)
    assert result.disks[0].data_bytes >= 1 * MiB
    assert result.disks[0].zero_bytes == 0
    files = [out / "vda.full.data", out / f"vda.inc.{cp(out, 1)}.data"]
    got = reconstruct(files, 16 * MiB, tmp_path / "a.raw")
    assert_identical(got, vm.expected("vda"), fmt="raw")
    assert os.path.getsize(files[1]) > 1 * MiB


def test_inc_redefines_checkpoints_libvirt_lost(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    vm.write_pattern("vda", 0, 1 * MiB, 0x21)
    out = tmp_path / "set"
    backup(vm, "full", out)
    vm.write_pattern("vda", 2 * MiB, 1 * MiB, 0x22)
    backup(vm, "inc", out)
    for name in (cp(out, 1), cp(out, 0)):  # libvirtd forgets, bitmaps stay
        vm.dom.checkpointLookupByName(name).delete(
            libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
        )
    assert vm.dom.listAllCheckpoints() == []
    vm.write_pattern("vda", 5 * MiB, 64 * 1024, 0x23)
    result = backup(vm, "inc", out)
    assert result.checkpoint == cp(out, 2)
    assert result.disks[0].data_bytes == 64 * 1024
    files = [out / "vda.full.data"] + [out / f"vda.inc.{cp(out, n)}.data" for n in (1, 2)]
    got = reconstruct(files, 16 * MiB, tmp_path / "a.raw")
    assert_identical(got, vm.expected("vda"), fmt="raw")
