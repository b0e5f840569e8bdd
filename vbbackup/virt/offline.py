"""Back up a shut-off domain: start it paused for the job, destroy it after.

A paused QEMU exports its disks over NBD like a running one and the guest
never runs; destroying it afterwards writes the persistent bitmaps into
the qcow2 images, so the next ``inc`` finds them. A domain that was
already running is left exactly as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import libvirt

from vbbackup.errors import LibvirtError


@contextlib.contextmanager
def started_paused(dom: libvirt.virDomain) -> Iterator[bool]:
    """Yield True when the domain was started here (and is destroyed on exit)."""
    if dom.isActive():
        yield False
        return
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    except libvirt.libvirtError as err:
        raise LibvirtError(
            f"cannot start {dom.name()} paused for the backup: {err.get_error_message()}"
        ) from None
    try:
        yield True
    finally:
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            raise LibvirtError(
                f"{dom.name()} was started for the backup and could not be shut off again: "
                f"{err.get_error_message()}; run: virsh destroy {dom.name()}"
            ) from None
