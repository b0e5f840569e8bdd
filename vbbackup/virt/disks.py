"""The disks of a domain, read from its XML with lxml, and which of them a backup can take.

Only qcow2 images can carry the persistent dirty bitmaps that checkpoints need;
raw images and direct-attached devices (LUN passthrough) can only be copied
whole, and removable media (cdrom, floppy) are never backed up.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree


@dataclass(frozen=True)
class DomainDisk:
    """One ``<disk>`` of the domain XML."""

    target: str
    device: str  # disk, cdrom, floppy, lun
    type: str  # file, block, network, volume
    format: str  # qcow2, raw, ... ("" when not given)
    path: str | None  # file or block device; None for network and pool volumes, empty drives
    has_medium: bool = True  # False for an empty drive (no <source>)

    @property
    def removable(self) -> bool:
        return self.device in ("cdrom", "floppy")

    @property
    def bitmap_capable(self) -> bool:
        """Whether checkpoints (dirty bitmaps) are possible: qcow2, not a LUN."""
        return self.format == "qcow2" and self.device == "disk"


def domain_disks(xml: str | bytes) -> list[DomainDisk]:
    """Every disk of a domain XML document, in document order."""
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml)
    disks = []
    for node in root.iterfind("devices/disk"):
        target = node.find("target")
        if target is None or not target.get("dev"):
            continue
        driver = node.find("driver")
        source = node.find("source")
        path = None
        if source is not None:
            path = source.get("file") or source.get("dev")
        disks.append(
            DomainDisk(
                target=target.get("dev", ""),
                device=node.get("device", "disk"),
                type=node.get("type", "file"),
                format=driver.get("type", "") if driver is not None else "",
                path=path,
                has_medium=source is not None,
            )
        )
    return disks
