"""--estimate's number comes from libvirt's bitmap size and is close to what an inc writes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fixtures import own_vm
from tests.harness.vm import DiskSpec, MiB, TestVM
from tests.integration.vnb_sets import apply_ops, make_virtnbdbackup_chain, run_virtnbdbackup
from vbbackup.chain import read_meta
from vbbackup.errors import LibvirtError
from vbbackup.virt.estimate import checkpoint_sizes, estimate

pytestmark = pytest.mark.integration
GRANULARITY = 64 * 1024


@pytest.fixture
def vm() -> Iterator[TestVM]:
    with own_vm([DiskSpec("vda", 16 * MiB), DiskSpec("vdb", 16 * MiB)], "virtnbdbackup") as vm:
        yield vm


def test_estimate_is_close_to_what_the_inc_writes(vm: TestVM, tmp_path: Path) -> None:
    backup = tmp_path / "set"
    make_virtnbdbackup_chain(vm, backup, compress=False, writes_per_step=[[]])
    assert estimate(vm.dom, "virtnbdbackup.0") == 0
    apply_ops(vm, "vda", [("write", MiB, 3 * MiB, 0x11), ("write", 9 * MiB + 5, 1000, 0x22)])
    vm.write_pattern("vdb", 0, MiB, 0x33)
    sizes = checkpoint_sizes(vm.dom, "virtnbdbackup.0")
    assert sizes == {"vda": 3 * MiB + GRANULARITY, "vdb": MiB}
    assert estimate(vm.dom, "virtnbdbackup.0", ["vdb"]) == MiB
    run_virtnbdbackup(vm, backup, "inc", compress=False)
    for disk in ("vda", "vdb"):
        written = read_meta(backup / f"{disk}.inc.virtnbdbackup.1.data").data_size
        assert abs(written - sizes[disk]) <= GRANULARITY, (disk, written, sizes[disk])


def test_unknown_checkpoint_is_one_clear_error(vm: TestVM) -> None:
    with pytest.raises(LibvirtError, match=f"cannot read the size of checkpoint nope of {vm.name}"):
        estimate(vm.dom, "nope")
