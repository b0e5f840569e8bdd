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

    def __enter__(self) -> GuestFreeze:
        if self.dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            return self  # a paused guest runs nothing: there is nothing to freeze
        try:
            self.frozen = self.dom.fsFreeze(self.mountpoints, 0)
        except libvirt.libvirtError as err:
            reason = err.get_error_message() or str(err)
            self.warn(
                f"warning: {self.dom.name()}: filesystems not frozen ({reason}); "
                "the backup is crash-consistent"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.frozen:
            thaw(self.dom, self.mountpoints)
            self.frozen = 0


def thaw(dom: libvirt.virDomain, mountpoints: list[str] | None = None) -> None:
    """Thaw; a guest left frozen is an outage, so failing here is an error."""
    try:
        dom.fsThaw(mountpoints, 0)
    except libvirt.libvirtError as err:
        raise LibvirtError(
            f"could not thaw the filesystems of {dom.name()}: {err.get_error_message()}; "
            f"run: virsh domfsthaw {dom.name()}"
        ) from None
