"""How much an inc/diff since a checkpoint would write, from libvirt's bitmap sizes.

``VIR_DOMAIN_CHECKPOINT_XML_SIZE`` makes libvirt ask QEMU how many bytes
each disk's bitmap marks dirty (``<disk name='vda' ... size='3145728'/>``):
the data an incremental backup since that checkpoint reads, rounded up to
the bitmap granularity. Needs a running (or paused) domain. A disk whose
bitmap is missing or broken in QEMU comes without ``size``: that is how a
broken checkpoint is found before a job would fail on it.
"""

from __future__ import annotations

import libvirt
from lxml import etree

from vbbackup.errors import LibvirtError


def checkpoint_sizes(dom: libvirt.virDomain, checkpoint: str) -> dict[str, int | None]:
    """Dirty bytes since ``checkpoint`` per disk target; None: the bitmap is missing."""
    try:
        cp = dom.checkpointLookupByName(checkpoint)
        xml = cp.getXMLDesc(
            libvirt.VIR_DOMAIN_CHECKPOINT_XML_SIZE | libvirt.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN
        )
    except libvirt.libvirtError as err:
        raise LibvirtError(
            f"cannot read the size of checkpoint {checkpoint} of {dom.name()}: "
            f"{err.get_error_message()}"
        ) from None
    root = etree.fromstring(xml)
    return {
        str(disk.get("name")): int(size) if (size := disk.get("size")) is not None else None
        for disk in root.iterfind("disks/disk")
        if disk.get("checkpoint") == "bitmap"
    }


def estimate(dom: libvirt.virDomain, checkpoint: str, disks: list[str] | None = None) -> int:
    """Total dirty bytes since ``checkpoint`` (over ``disks``, default all)."""
    sizes = checkpoint_sizes(dom, checkpoint)
    return sum(n or 0 for target, n in sizes.items() if disks is None or target in disks)


def missing_bitmaps(dom: libvirt.virDomain, checkpoint: str, disks: list[str]) -> list[str]:
    """The disks of ``disks`` whose bitmap of ``checkpoint`` QEMU does not have."""
    sizes = checkpoint_sizes(dom, checkpoint)
    return [target for target in disks if sizes.get(target, 0) is None]
