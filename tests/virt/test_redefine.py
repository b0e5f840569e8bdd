"""Checkpoints that libvirt lost come back from the backup set's checkpoints/*.xml."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import libvirt_qemu
import pytest

from tests.harness.backup import pull_backup
from tests.harness.fixtures import own_vm
from tests.harness.vm import DiskSpec, MiB, TestVM
from tests.integration.vnb_sets import make_virtnbdbackup_chain
from vbbackup.engine.check import CheckConfig, check
from vbbackup.errors import ChainError, LibvirtError
from vbbackup.virt.redefine import drop_orphan_bitmaps, known_checkpoints, redefine_checkpoints

pytestmark = pytest.mark.integration
STEPS = [[("write", 0, MiB, 0x11)], [("write", 2 * MiB, MiB, 0x22)]]


@pytest.fixture
def vm_with_set(tmp_path: Path) -> Iterator[tuple[TestVM, Path, list[str]]]:
    with own_vm([DiskSpec(size=16 * MiB)], "virtnbdbackup") as vm:
        backup = tmp_path / "set"
        make_virtnbdbackup_chain(vm, backup, compress=False, writes_per_step=STEPS)
        names = json.loads(next(backup.glob("*.cpt")).read_text())
        yield vm, backup, names


def _forget_checkpoints(vm: TestVM) -> None:
    """Drop libvirt's checkpoint metadata (as a wiped libvirtd state would); QEMU keeps
    the bitmaps."""
    assert vm.dom is not None
    root = vm.dom.checkpointLookupByName("virtnbdbackup.0")
    root.delete(
        libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
        | libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN
    )
    assert known_checkpoints(vm.dom) == set()


def test_lost_checkpoints_are_redefined_and_usable(
    vm_with_set: tuple[TestVM, Path, list[str]],
) -> None:
    vm, backup, names = vm_with_set
    _forget_checkpoints(vm)
    assert redefine_checkpoints(vm.dom, names, backup / "checkpoints") == names
    assert known_checkpoints(vm.dom) == set(names)
    assert check(CheckConfig(vm.name, backup)).findings == []
    assert redefine_checkpoints(vm.dom, names, backup / "checkpoints") == []  # idempotent
    # an incremental job from the redefined checkpoint is accepted by libvirt and QEMU
    vm.write_pattern("vda", 4 * MiB, MiB, 0x33)
    with pull_backup(vm, checkpoint="virtnbdbackup.2", incremental=names[-1]) as job:
        assert job.bitmaps["vda"] == "qemu:dirty-bitmap:backup-vda"


def test_missing_xml_is_a_clear_error(vm_with_set: tuple[TestVM, Path, list[str]]) -> None:
    vm, backup, names = vm_with_set
    _forget_checkpoints(vm)
    (backup / "checkpoints" / f"{names[1]}.xml").unlink()
    with pytest.raises(ChainError) as err:
        redefine_checkpoints(vm.dom, names, backup / "checkpoints")
    assert str(err.value) == (
        f"libvirt lost checkpoint {names[1]} of {vm.name} and "
        f"{backup / 'checkpoints' / (names[1] + '.xml')} is missing: it cannot be redefined"
    )


def test_missing_bitmap_is_found_before_reading(
    vm_with_set: tuple[TestVM, Path, list[str]],
) -> None:
    vm, backup, names = vm_with_set
    _forget_checkpoints(vm)
    _qmp(vm, "block-dirty-bitmap-remove", node=_format_node(vm), name=names[1])
    with pytest.raises(LibvirtError, match=f"cannot redefine checkpoint {names[1]} of {vm.name}"):
        redefine_checkpoints(vm.dom, names, backup / "checkpoints")


def _qmp(vm: TestVM, command: str, **arguments: str) -> Any:
    message = {"execute": command, "arguments": arguments} if arguments else {"execute": command}
    return json.loads(libvirt_qemu.qemuMonitorCommand(vm.dom, json.dumps(message), 0))["return"]


def _format_node(vm: TestVM) -> str:
    (device,) = [d for d in _qmp(vm, "query-block") if d.get("inserted")]
    return str(device["inserted"]["node-name"])


def test_orphaned_bitmaps_are_dropped_disk_by_disk(make_vm) -> None:  # type: ignore[no-untyped-def]
    vm: TestVM = make_vm(disks=[DiskSpec("vda", 16 * MiB), DiskSpec("vdb", 16 * MiB)])
    with pull_backup(vm, checkpoint="virtnbdbackup.0", disks=["vdb"]):
        pass
    vm.dom.checkpointLookupByName("virtnbdbackup.0").delete(
        libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
    )
    targets = ["vda", "vdb"]
    assert drop_orphan_bitmaps(vm.dom, "virtnbdbackup.0", targets, targets) == ["vdb"]
    assert known_checkpoints(vm.dom) == set()
    assert drop_orphan_bitmaps(vm.dom, "virtnbdbackup.0", targets, targets) == []
    with pull_backup(vm, checkpoint="virtnbdbackup.0"):  # the name is free again
        pass
