"""Guest-agent filesystem freeze around the moment a checkpoint is taken.

    with GuestFreeze(dom, mountpoints, warn):   # fsFreeze (or one warning)
        dom.backupBegin(...)                    # the checkpoint is consistent
    # fsThaw on every path, also when backupBegin raised

A paused domain is left alone (its guest runs nothing). A running one
without an agent (none configured, not answering) is backed up
crash-consistent, and the user is told so in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType

import libvirt

from vbbackup.errors import LibvirtError


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
                f"warning: {self.dom.name()}: filesystems not frozen ({reason}); "
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
    if record.get("frozen"):
        mountpoints = record.get("mountpoints")
        listed = mountpoints if isinstance(mountpoints, list) else []
        where = ", ".join(str(m) for m in listed) or "all file systems"
        thawed = "thawed afterwards" if record.get("thawed") else "NOT thawed"
        return f"application-consistent: guest file systems frozen ({where}), {thawed}"
    return f"crash-consistent: {record.get('reason') or 'not frozen'}"
