"""Our sets are virtnbdbackup sets: Debian's virtnbdrestore restores them exactly.

virtnbdrestore 1.9.15 skips every ``zero`` frame (it restores into a new sparse
image, see virtnbdbackup issue #56), so a range discarded between two backups,
which our incrementals record as a zero frame, comes back stale there; with
``--no-sparse-detection`` such ranges are written as data and it restores them.
Our own restore and the chain library apply zero frames (tests/engine/test_backup.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.engine.test_backup import backup
from tests.harness.backup import cp
from tests.harness.compare import assert_identical
from tests.harness.vm import DiskSpec
from tests.integration.vnb_sets import VNB_247, run_virtnbdrestore

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("virtnbdrestore") is None, reason="needs virtnbdrestore"),
]
MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("compress", "discard"),
    [(None, False), (2, False), (None, True)],
    ids=["plain", "lz4", "discard"],
)
def test_virtnbdrestore_restores_our_chain(make_vm, tmp_path: Path, compress, discard) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 32 * MiB), DiskSpec("vdb", 16 * MiB)])
    out = tmp_path / "set"
    vm.write_pattern("vda", 0, 3 * MiB, 0x31)
    vm.write_pattern("vdb", 5 * MiB, 2 * MiB, 0x32)
    backup(vm, "full", out, compress=compress)
    vm.write("vda", 7 * MiB + 3, b"incremental" * 5000)
    if discard:
        vm.discard("vda", 0, 1 * MiB)
    backup(vm, "inc", out, compress=compress, sparse_detection=not discard)
    vm.write_pattern("vdb", 9 * MiB, 3 * MiB, 0x33)
    backup(vm, "inc", out, compress=compress)
    restored = tmp_path / "restored"
    run_virtnbdrestore(out, restored, "-n", "-f", str(vm.dir / "restore.sock"))
    for target in ("vda", "vdb"):
        image = restored / vm.disk_path(target).name  # named like the source image
        assert_identical(image, vm.expected(target))


def test_virtnbdrestore_restores_our_copy(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    vm.write_pattern("vda", 2 * MiB, 3 * MiB, 0x44)
    out = tmp_path / "copy"
    backup(vm, "copy", out, compress=2)
    restored = tmp_path / "restored"
    run_virtnbdrestore(out, restored, "-n", "-f", str(vm.dir / "restore.sock"))
    assert_identical(restored / vm.disk_path("vda").name, vm.expected("vda"))


@pytest.mark.parametrize("tool", ["1.9.15", "2.47"])
@pytest.mark.parametrize("compress", [None, 2], ids=["plain", "lz4"])
def test_virtnbdrestore_until_every_point_of_our_chain(
    make_vm, tmp_path: Path, tool, compress
) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    """Our checkpoint names (``vbbackup.<chain>.N``) work with both virtnbdrestores' --until."""
    binary = "virtnbdrestore" if tool == "1.9.15" else str(VNB_247 / "virtnbdrestore")
    if tool == "2.47" and not Path(binary).exists():
        if os.environ.get("VBBACKUP_REQUIRE_INTEGRATION"):
            pytest.fail(f"{binary} is missing (scripts/setup.sh installs it)")
        pytest.skip(f"needs {binary}")
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    out = tmp_path / "set"
    expected = []
    for k, level in enumerate(["full", "inc", "inc"]):
        vm.write_pattern("vda", k * 3 * MiB, 2 * MiB, 0x50 + k)
        backup(vm, level, out, compress=compress)
        copy = tmp_path / f"expected.{k}"
        shutil.copyfile(vm.expected("vda"), copy)
        expected.append(copy)
    for k, image in enumerate(expected):
        restored = tmp_path / f"restored.{k}"
        sock = str(vm.dir / f"restore-{k}.sock")
        run_virtnbdrestore(out, restored, "-n", "-f", sock, "--until", cp(out, k), tool=binary)
        assert_identical(restored / vm.disk_path("vda").name, image)
