"""The steps of backup_ops on real domains: jobs, broken bitmaps, estimate, fallback."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest

from tests.harness.backup import pull_backup
from tests.harness.vm import DiskSpec, MiB, TestVM
from vbbackup.engine.backup_ops import (
    BackupOptions,
    Estimate,
    below_threshold,
    broken_bitmaps,
    clear_jobs,
    domain_ready,
    estimate_changes,
    fallback_dir,
    refuse_or_fall_back,
)
from vbbackup.errors import BackupBusyError, ChainError, LibvirtError

GRANULARITY = 64 * 1024


def test_fallback_dir_is_the_next_free_sibling(tmp_path: Path) -> None:
    chain = tmp_path / "vm"
    chain.mkdir()
    assert fallback_dir(chain) == tmp_path / "vm.1"
    (tmp_path / "vm.1").mkdir()
    assert fallback_dir(chain) == tmp_path / "vm.2"


def test_no_fallback_fails_with_the_problem(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(ChainError) as err:
        refuse_or_fall_back(tmp_path / "vm", "bitmap gone", BackupOptions(fallback=False), print)
    assert str(err.value) == ("bitmap gone; start a new chain with `vbbackup full` (--no-fallback)")
    target = refuse_or_fall_back(tmp_path / "vm", "bitmap gone", BackupOptions(), lines.append)
    assert target == tmp_path / "vm.1"
    assert lines == [f"bitmap gone; falling back to a full backup into a new chain: {target}"]


@pytest.mark.integration
def test_running_job_needs_kill_jobs(make_vm) -> None:  # type: ignore[no-untyped-def]
    vm: TestVM = make_vm()
    lines: list[str] = []
    clear_jobs(vm.dom, BackupOptions(), lines.append)  # no job: nothing to do
    with pull_backup(vm):
        with pytest.raises(BackupBusyError, match="abort it with --kill-jobs"):
            clear_jobs(vm.dom, BackupOptions(), lines.append)
        clear_jobs(vm.dom, BackupOptions(kill_jobs=True), lines.append)
        assert vm.dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
    assert lines == [f"aborted the job that was running on {vm.name} (--kill-jobs)"]


@pytest.mark.integration
def test_shut_off_domain_needs_start_domain(make_vm) -> None:  # type: ignore[no-untyped-def]
    vm: TestVM = make_vm()
    vm.dom.destroy()
    with (
        pytest.raises(LibvirtError, match="or give --start-domain"),
        domain_ready(vm.dom, BackupOptions(), print),
    ):
        pass
    lines: list[str] = []
    with domain_ready(vm.dom, BackupOptions(start_domain=True), lines.append):
        assert vm.dom.isActive()
    assert not vm.dom.isActive()
    assert lines == [f"started {vm.name} paused for the backup; it is shut off again afterwards"]


@pytest.mark.integration
def test_broken_bitmap_found_before_the_job(make_vm) -> None:  # type: ignore[no-untyped-def]
    vm: TestVM = make_vm(disks=[DiskSpec("vda", 16 * MiB), DiskSpec("vdb", 16 * MiB)])
    with pull_backup(vm, checkpoint="cp0"):
        pass
    assert broken_bitmaps(vm.dom, "cp0", ["vda", "vdb"]) == []
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(vm.dom, '{"execute": "query-block"}', 0))
    node = next(
        d["inserted"]["node-name"]
        for d in reply["return"]
        if d.get("inserted", {}).get("file") == str(vm.disk_path("vdb"))
    )
    remove = {"execute": "block-dirty-bitmap-remove", "arguments": {"node": node, "name": "cp0"}}
    libvirt_qemu.qemuMonitorCommand(vm.dom, json.dumps(remove), 0)
    assert broken_bitmaps(vm.dom, "cp0", ["vda", "vdb"]) == ["vdb"]
    fails = pytest.raises(libvirt.libvirtError, match="missing or broken bitmap 'cp0'")
    with fails, pull_backup(vm, checkpoint="cp1", incremental="cp0"):
        pass


@pytest.mark.integration
def test_estimate_and_threshold(make_vm) -> None:  # type: ignore[no-untyped-def]
    vm: TestVM = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    with pull_backup(vm, checkpoint="cp0"):
        pass
    vm.write_pattern("vda", MiB, 2 * MiB, 0x11)
    changes = estimate_changes(vm.dom, "cp0", ["vda"])
    assert changes == Estimate("cp0", {"vda": 2 * MiB})
    assert changes.line() == f"estimate: {2 * MiB} bytes changed since cp0 (vda {2 * MiB})"
    lines: list[str] = []
    assert not below_threshold(changes, BackupOptions(), lines.append)
    assert below_threshold(changes, BackupOptions(threshold=3 * MiB), lines.append)
    assert not below_threshold(changes, BackupOptions(threshold=MiB), lines.append)
    assert lines == [
        f"skipped: {2 * MiB} bytes changed since cp0, less than the threshold of {3 * MiB}",
    ]
