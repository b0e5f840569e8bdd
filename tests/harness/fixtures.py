"""pytest fixtures over the harness; tests/conftest.py makes them visible to every test.

    def test_x(make_vm):
        vm = make_vm(disks=[DiskSpec("vda", 32 * MiB), DiskSpec("vdb", 16 * MiB, fmt="raw")])

Integration fixtures skip when a capability is missing, naming it; with
VBBACKUP_REQUIRE_INTEGRATION=1 (set by .ci/run) a missing capability fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness.libvirtd import URI, capabilities, ensure_libvirtd

if TYPE_CHECKING:
    from tests.harness.vm import DiskSpec, TestVM


def require(*names: str) -> None:
    """Skip (or, in CI, fail) the current test unless every named capability is present."""
    missing = capabilities().missing(*names)
    if not missing:
        return
    reason = f"missing capability: {', '.join(missing)} (run scripts/setup.sh)"
    if os.environ.get("VBBACKUP_REQUIRE_INTEGRATION") == "1":
        pytest.fail(reason + "; VBBACKUP_REQUIRE_INTEGRATION=1 forbids skipping")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def libvirt_conn() -> Iterator[Any]:
    """A libvirt connection to qemu:///system; libvirtd is started if needed and leftovers
    of crashed runs (vbtest-<dead pid>-*) are removed first."""
    require("libvirt_python", "libvirtd", "qemu")
    import libvirt

    from tests.harness.vm import sweep_stale

    ensure_libvirtd()
    conn = libvirt.open(URI)
    sweep_stale(conn)
    yield conn
    conn.close()


@pytest.fixture
def make_vm(libvirt_conn: Any) -> Iterator[Callable[..., Any]]:
    """Factory for throwaway paused VMs (tests.harness.vm.TestVM); all are removed after the
    test, passed or failed.

    make_vm(disks=[DiskSpec(target="vda", size=32 * MiB, fmt="qcow2", image=None)],
            cdrom=False, qcow2_compat="1.1", memory_mib=64) -> TestVM
    """
    from tests.harness.vm import DiskSpec, TestVM

    vms: list[TestVM] = []

    def factory(
        disks: Iterable[DiskSpec] = (DiskSpec(),),
        cdrom: bool = False,
        qcow2_compat: str = "1.1",
        memory_mib: int = 64,
    ) -> TestVM:
        vm = TestVM(
            libvirt_conn, disks, cdrom=cdrom, qcow2_compat=qcow2_compat, memory_mib=memory_mib
        )
        vms.append(vm)
        return vm

    yield factory
    for vm in reversed(vms):
        vm.close()


@contextmanager
def own_vm(disks: Iterable[DiskSpec], *needs: str) -> Iterator[TestVM]:
    """One throwaway VM on a connection of its own, for fixtures ``make_vm`` cannot serve
    (module scope, or a set built once on the VM); ``needs`` are further capabilities.

        @pytest.fixture(scope="module")
        def vm() -> Iterator[TestVM]:
            with own_vm([DiskSpec(size=16 * MiB)], "virtnbdbackup") as vm:
                yield vm
    """
    require("libvirt_python", "libvirtd", "qemu", *needs)
    import libvirt

    from tests.harness.vm import TestVM

    ensure_libvirtd()
    conn = libvirt.open(URI)
    try:
        with TestVM(conn, disks) as vm:
            yield vm
    finally:
        conn.close()


@pytest.fixture(scope="session")
def real_guest(libvirt_conn: Any) -> Iterator[Any]:
    """One running real Debian guest for the whole session (tests.harness.guest.Guest):
    booting one costs about 40 s under TCG, so tests share it and leave it running and
    unfrozen; backups of it go into each test's own directory (a chain of its own)."""
    require("guest_build")
    from tests.harness.guest import Guest, guest_image

    guest = Guest(libvirt_conn, guest_image())
    yield guest
    guest.close()
