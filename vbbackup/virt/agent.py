"""The guest agent: filesystem freeze around the moment a checkpoint is taken, and
commands in the guest (``verify --boot --check``).

    with GuestFreeze(dom, mountpoints, warn):   # fsFreeze (or one warning)
        dom.backupBegin(...)                    # the checkpoint is consistent
    # fsThaw on every path, also when backupBegin raised

A paused domain is left alone (its guest runs nothing). A running one
without an agent (none configured, not answering) is backed up
crash-consistent, and the user is told so in one line.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import libvirt
import libvirt_qemu

from vbbackup.errors import LibvirtError
from vbbackup.virt.domainxml import agent_connected


class GuestFreeze:
    """Freeze the guest's filesystems (all, or ``mountpoints``) inside the block."""

    def __init__(
        self,
        dom: libvirt.virDomain,
        mountpoints: Sequence[str] = (),
        warn: Callable[[str], None] = print,
    ) -> None:
        self.dom = dom
        self.mountpoints = list(mountpoints) or None
        self.warn = warn
        self.frozen = 0  # number of filesystems the agent froze
        self.frozen_at: list[str] = []  # their mount points, as the agent reports them
        self.reason = ""  # why nothing was frozen
        self.thawed = False

    def __enter__(self) -> GuestFreeze:
        if self.dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            self.reason = "the guest was paused (it ran nothing to freeze)"
            return self
        try:
            self.frozen_at = list(self.mountpoints or _mountpoints(self.dom))
            self.frozen = self.dom.fsFreeze(self.mountpoints, 0)
        except libvirt.libvirtError as err:
            reason = err.get_error_message() or str(err)
            self.reason = f"guest agent: {reason}"
            self.warn(
                f"{self.dom.name()}: filesystems not frozen ({reason}); "
                "the backup is crash-consistent"
            )
        return self

    def consistency(self) -> dict[str, object]:
        """What a set records of this backup: frozen (where, thawed) or why not."""
        if self.frozen or self.thawed:
            return {"frozen": True, "mountpoints": self.frozen_at, "thawed": self.thawed}
        return {"frozen": False, "reason": self.reason or "no file system was frozen"}

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.frozen:
            thaw(self.dom, self.mountpoints)
            self.thawed = True


def thaw(dom: libvirt.virDomain, mountpoints: list[str] | None = None) -> None:
    """Thaw; a guest left frozen is an outage, so failing here is an error."""
    try:
        dom.fsThaw(mountpoints, 0)
    except libvirt.libvirtError as err:
        raise LibvirtError(
            f"could not thaw the filesystems of {dom.name()}: {err.get_error_message()}; "
            f"run: virsh domfsthaw {dom.name()}"
        ) from None


def _mountpoints(dom: libvirt.virDomain) -> list[str]:
    """The guest's mounted file systems (guest-get-fsinfo); [] when the agent cannot say."""
    try:
        return [str(fs[0]) for fs in dom.fsInfo(0)]
    except libvirt.libvirtError:
        return []


def consistency_line(record: dict[str, object]) -> str:
    """One line for the summary, the log and ``info``."""
    if record.get("paused") and not record.get("frozen"):
        return "crash-consistent: the domain was paused while the backup job started (--pause)"
    if record.get("frozen"):
        mountpoints = record.get("mountpoints")
        listed = mountpoints if isinstance(mountpoints, list) else []
        where = ", ".join(str(m) for m in listed) or "all file systems"
        thawed = "thawed afterwards" if record.get("thawed") else "NOT thawed"
        return f"application-consistent: guest file systems frozen ({where}), {thawed}"
    return f"crash-consistent: {record.get('reason') or 'not frozen'}"


@dataclass(frozen=True)
class ExecResult:
    """What ``guest-exec`` reports of a finished command."""

    exitcode: int | None  # None: killed by a signal
    stdout: bytes
    stderr: bytes
    signal: int | None = None


def agent_command(dom: libvirt.virDomain, command: str, timeout: int = 10, **arguments: Any) -> Any:
    """One QEMU guest-agent command; its ``return`` value, or LibvirtError naming it."""
    request = json.dumps({"execute": command, **({"arguments": arguments} if arguments else {})})
    try:
        reply = libvirt_qemu.qemuAgentCommand(dom, request, timeout, 0)
    except libvirt.libvirtError as err:
        raise LibvirtError(
            f"guest agent of {dom.name()}: {command}: {err.get_error_message()}"
        ) from None
    return json.loads(reply).get("return")


def agent_answers(dom: libvirt.virDomain, timeout: int = 2) -> bool:
    """Whether the guest agent replies to ``guest-ping`` now."""
    try:
        agent_command(dom, "guest-ping", timeout)
    except LibvirtError:
        return False
    return True


def guest_exec(
    dom: libvirt.virDomain, argv: Sequence[str], timeout: float = 60.0, stdin: bytes | None = None
) -> ExecResult:
    """Run ``argv`` in the guest through its agent and wait for it (``guest-exec``)."""
    args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    if stdin is not None:
        args["input-data"] = base64.b64encode(stdin).decode()
    pid = agent_command(dom, "guest-exec", **args)["pid"]
    deadline = time.monotonic() + timeout
    while True:
        status = agent_command(dom, "guest-exec-status", pid=pid)
        if status.get("exited"):
            return ExecResult(
                exitcode=status.get("exitcode"),
                stdout=base64.b64decode(status.get("out-data", "")),
                stderr=base64.b64decode(status.get("err-data", "")),
                signal=status.get("signal"),
            )
        if time.monotonic() > deadline:
            raise LibvirtError(f"{dom.name()}: {' '.join(argv)} did not end within {timeout:.0f} s")
        time.sleep(0.1)


def guest_os(dom: libvirt.virDomain, live_xml: str) -> dict[str, str] | None:
    """The guest's OS as its agent reports it (guest-get-osinfo: id, name, version,
    kernel); None when no agent is connected or it cannot say. Never blocks on a guest
    without an agent: asked only when libvirt sees the agent connected."""
    if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING or not agent_connected(live_xml):
        return None
    try:
        info = dom.guestInfo(libvirt.VIR_DOMAIN_GUEST_INFO_OS, 0)
    except libvirt.libvirtError:
        return None
    found = {k.removeprefix("os."): str(v) for k, v in info.items() if k.startswith("os.")}
    return found or None
