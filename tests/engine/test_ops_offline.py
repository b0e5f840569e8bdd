"""A shut-off domain is started paused for the backup and shut off again after."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import libvirt
import pytest

from tests.harness.backup import pull_backup
from tests.harness.fixtures import own_vm
from tests.harness.vm import DiskSpec, MiB, TestVM
from vbbackup.errors import LibvirtError
from vbbackup.virt.offline import started_paused

pytestmark = pytest.mark.integration


@pytest.fixture
def vm() -> Iterator[TestVM]:
    with own_vm([DiskSpec(size=16 * MiB)]) as vm:
        yield vm


def _image_bitmaps(vm: TestVM) -> list[str]:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", str(vm.disk_path("vda"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(b["name"] for b in json.loads(out)["format-specific"]["data"].get("bitmaps", []))


def test_shut_off_domain_backs_up_and_is_shut_off_again(vm: TestVM) -> None:
    assert vm.dom is not None
    vm.write_pattern("vda", 0, MiB, 0x11)
    vm.dom.destroy()
    with started_paused(vm.dom) as started:
        assert started
        state, _ = vm.dom.state()
        assert state == libvirt.VIR_DOMAIN_PAUSED
        with pull_backup(vm, checkpoint="cp0") as job:
            assert job.socket.exists()
    assert not vm.dom.isActive()
    # cp0's bitmap went into the image at shut-off: an incremental can follow.
    # Known race on this stack: a QEMU started within ~1 s of the destroy that ended a
    # job with a checkpoint sometimes dies at start ("process exited while connecting to
    # monitor"; the image is sound and a second start works). Admins' runs are minutes
    # apart; the test waits instead of retrying on the error.
    time.sleep(2)
    with started_paused(vm.dom), pull_backup(vm, checkpoint="cp1", incremental="cp0") as job:
        assert job.bitmaps["vda"] == "qemu:dirty-bitmap:backup-vda"
    assert not vm.dom.isActive()
    assert _image_bitmaps(vm) == ["cp0", "cp1"]


def test_shut_off_again_when_the_backup_fails(vm: TestVM) -> None:
    assert vm.dom is not None
    vm.dom.destroy()
    with pytest.raises(libvirt.libvirtError), started_paused(vm.dom):
        pull_backup(vm, incremental="no-such-checkpoint").__enter__()
    assert not vm.dom.isActive()


def test_running_domain_is_left_alone(vm: TestVM) -> None:
    assert vm.dom is not None
    with started_paused(vm.dom) as started:
        assert not started
    assert vm.dom.isActive()


def test_domain_that_cannot_start_is_one_clear_error(vm: TestVM) -> None:
    assert vm.dom is not None
    vm.dom.destroy()
    vm.disk_path("vda").rename(vm.disk_path("vda").with_suffix(".gone"))
    fails = pytest.raises(LibvirtError, match=f"cannot start {vm.name} paused for the backup: ")
    with fails, started_paused(vm.dom):
        pass
