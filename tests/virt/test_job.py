"""BackupJob: begun on enter, ended on every way out; stale jobs of dead runs only."""

from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest

from tests.harness.vm import DiskSpec
from vbbackup.nbdio import NbdReader
from vbbackup.virt import BackupJob
from vbbackup.virt.job import end_stale_job

pytestmark = pytest.mark.integration
MiB = 1024 * 1024


def idle(dom: libvirt.virDomain) -> bool:
    return dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE


def test_job_exports_disks_and_ends_on_an_exception(make_vm) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB), DiskSpec("vdb", 8 * MiB)])
    vm.write_pattern("vda", 0, MiB, 0x5A)
    with (
        pytest.raises(RuntimeError, match="boom"),
        BackupJob(vm.dom, ["vda"], ["vdb"], vm.dir) as job,
    ):
        assert set(job.disks) == {"vda"} and job.disks["vda"].bitmap is None
        assert job.socket.name == f"vbbackup-{vm.name}-{os.getpid()}.sock"
        with NbdReader(socket=job.socket, export=job.disks["vda"].export) as r:
            assert r.size == 16 * MiB
            assert r.handle.pread(4, 0) == b"\x5a" * 4
        raise RuntimeError("boom")
    assert idle(vm.dom)
    assert not job.socket.exists() and not any(p.exists() for p in job.scratch.values())


def test_stale_job_is_ended_only_when_its_run_is_dead(make_vm) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    job = BackupJob(vm.dom, ["vda"], [], vm.dir)
    job.__enter__()
    try:
        assert end_stale_job(vm.dom) is None  # our own pid: alive
        assert not idle(vm.dom)
    finally:
        job.__exit__(None, None, None)
    dead = Path(vm.dir) / "vbbackup-x-999999999.sock"  # no such pid
    job = BackupJob(vm.dom, ["vda"], [], vm.dir)
    job.socket = dead
    job.__enter__()
    job._running = False  # as if this process had been killed: its job lives on
    assert end_stale_job(vm.dom) == str(dead)
    assert idle(vm.dom)
    job.__exit__(None, None, None)
