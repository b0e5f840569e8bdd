"""The real-stack test harness: libvirtd, throwaway VMs, live writes, pull backup jobs.

    from tests.harness import DiskSpec, MiB, pull_backup

    def test_full(make_vm):                       # fixture from tests/harness/fixtures.py
        vm = make_vm(disks=[DiskSpec("vda", 32 * MiB)])
        vm.write("vda", 0, b"boot")              # into the live disk via HMP qemu-io
        vm.write_pattern("vda", MiB, MiB, 0xAB)
        vm.discard("vda", 0, 4096)
        expected = vm.expected("vda")            # raw image of what vda holds now
        with pull_backup(vm, checkpoint="cp0") as job:
            ...                                   # read nbd+unix export "vda" at job.socket

Modules: `libvirtd` (ensure_libvirtd, capabilities), `vm` (TestVM, DiskSpec),
`backup` (pull_backup), `images` (make_fs_image, Partition), `fixtures`
(libvirt_conn, make_vm, require). Names from `vm` and `backup` load lazily, so
this package imports without python3-libvirt.
"""

from __future__ import annotations

import importlib
from typing import Any

from tests.harness.images import MiB, Partition, make_fs_image
from tests.harness.libvirtd import Capabilities, HarnessError, capabilities, ensure_libvirtd

_LAZY = {
    "TestVM": "tests.harness.vm",
    "DiskSpec": "tests.harness.vm",
    "sweep_stale": "tests.harness.vm",
    "pull_backup": "tests.harness.backup",
    "PullBackupJob": "tests.harness.backup",
}

__all__ = [
    "Capabilities",
    "HarnessError",
    "MiB",
    "Partition",
    "capabilities",
    "ensure_libvirtd",
    "make_fs_image",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
