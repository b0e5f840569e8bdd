"""Guest-agent freeze: one warning without an agent, thawed on every path with one."""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest

from tests.harness.fixtures import own_vm
from tests.harness.vm import DiskSpec, MiB, TestVM
from vbbackup.errors import LibvirtError
from vbbackup.virt.agent import GuestFreeze, consistency_line


@pytest.fixture(scope="module")
def vm() -> Iterator[TestVM]:
    with own_vm([DiskSpec(size=16 * MiB)]) as vm:
        yield vm


@pytest.mark.integration
def test_paused_domain_is_not_frozen_and_not_warned_about(vm: TestVM) -> None:
    lines: list[str] = []
    ran = False
    with GuestFreeze(vm.dom, warn=lines.append) as freeze:
        ran = True
    assert ran and freeze.frozen == 0
    assert lines == []


@pytest.mark.integration
def test_running_domain_without_agent_warns_once(vm: TestVM) -> None:
    assert vm.dom is not None
    vm.dom.resume()
    try:
        lines: list[str] = []
        with GuestFreeze(vm.dom, ["/"], warn=lines.append):
            pass
    finally:
        vm.dom.suspend()
    assert len(lines) == 1
    assert lines[0].startswith(f"{vm.name}: filesystems not frozen (")
    assert "agent" in lines[0]


class _AgentDomain:
    """Stands in for a domain with a guest agent that answers (no such guest here:
    the test VMs have no OS). Records the calls so the order can be checked."""

    def __init__(self, thaw_fails: bool = False) -> None:
        self.calls: list[tuple[str, list[str] | None]] = []
        self.thaw_fails = thaw_fails

    def name(self) -> str:
        return "guest"

    def state(self) -> list[int]:
        return [libvirt.VIR_DOMAIN_RUNNING, 0]

    def fsFreeze(self, mountpoints: list[str] | None, flags: int) -> int:  # noqa: N802
        self.calls.append(("freeze", mountpoints))
        return 2

    def fsInfo(self, flags: int) -> list[tuple[str, str, str, list[str]]]:  # noqa: N802
        return [("/", "sda1", "ext4", ["vda"]), ("/home", "sdb1", "xfs", ["vdb"])]

    def fsThaw(self, mountpoints: list[str] | None, flags: int) -> int:  # noqa: N802
        self.calls.append(("thaw", mountpoints))
        if self.thaw_fails:
            raise libvirt.libvirtError("agent gone")
        return 2


def test_thawed_when_the_checkpoint_fails() -> None:
    dom = _AgentDomain()
    freeze = GuestFreeze(dom, ["/", "/var"], warn=pytest.fail)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="backupBegin failed"), freeze:
        dom.calls.append(("checkpoint", None))
        raise RuntimeError("backupBegin failed")
    assert dom.calls == [("freeze", ["/", "/var"]), ("checkpoint", None), ("thaw", ["/", "/var"])]


def test_thaw_failure_says_how_to_thaw() -> None:
    dom = _AgentDomain(thaw_fails=True)
    freeze = GuestFreeze(dom, warn=pytest.fail)  # type: ignore[arg-type]
    with pytest.raises(LibvirtError, match=r"could not thaw .*run: virsh domfsthaw guest"), freeze:
        pass
    assert dom.calls == [("freeze", None), ("thaw", None)]


def test_consistency_says_what_was_frozen_and_thawed() -> None:
    freeze = GuestFreeze(_AgentDomain(), warn=pytest.fail)  # type: ignore[arg-type]
    with freeze:
        pass
    record = freeze.consistency()
    assert record == {"frozen": True, "mountpoints": ["/", "/home"], "thawed": True}
    assert consistency_line(record) == (
        "application-consistent: guest file systems frozen (/, /home), thawed afterwards"
    )
