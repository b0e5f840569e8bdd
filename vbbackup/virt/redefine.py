"""Give libvirt back the checkpoints it lost, from the backup set's ``checkpoints/*.xml``.

libvirt keeps checkpoint metadata apart from the qcow2 bitmaps: undefining
and defining a domain again, or a reinstalled libvirtd, loses the metadata
while the bitmaps stay in the images. ``checkpointCreateXML(xml,
REDEFINE)`` with the XML saved at backup time restores it. On a running
domain ``REDEFINE_VALIDATE`` also makes QEMU confirm that every bitmap
exists, so a missing bitmap is found here and not while reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import libvirt

from vbbackup.errors import ChainError, LibvirtError


def known_checkpoints(dom: libvirt.virDomain) -> set[str]:
    return {cp.getName() for cp in dom.listAllCheckpoints()}


def redefine_checkpoints(
    dom: libvirt.virDomain, names: Sequence[str], checkpoint_dir: Path
) -> list[str]:
    """Redefine every checkpoint of ``names`` (chain order) that libvirt lacks.

    Returns the names redefined. Raises ChainError when a needed XML file
    is missing, LibvirtError when libvirt (or QEMU's validation) refuses.
    """
    known = known_checkpoints(dom)
    flags = libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
    done = []
    for name in names:
        if name in known:
            continue
        path = checkpoint_dir / f"{name}.xml"
        try:
            xml = path.read_text()
        except FileNotFoundError:
            raise ChainError(
                f"libvirt lost checkpoint {name} of {dom.name()} and {path} is missing: "
                "it cannot be redefined"
            ) from None
        try:
            dom.checkpointCreateXML(xml, flags)
        except libvirt.libvirtError as err:
            raise LibvirtError(
                f"cannot redefine checkpoint {name} of {dom.name()} from {path}: "
                f"{err.get_error_message()}"
            ) from None
        done.append(name)
    return done


def drop_orphan_bitmaps(
    dom: libvirt.virDomain, name: str, targets: Sequence[str], all_targets: Sequence[str]
) -> list[str]:
    """Remove bitmaps called ``name`` that QEMU holds but no libvirt checkpoint owns.

    Left behind when libvirt lost a checkpoint for good; a new checkpoint of
    that name would fail ("Bitmap already exists"). libvirt removes bitmaps
    only through checkpoints, so each is adopted by a one-disk checkpoint
    (redefined, validated) and that is deleted. Returns the disks cleaned.
    """
    if not dom.isActive() or name in known_checkpoints(dom):
        return []
    flags = (
        libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
        | libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
    )
    cleaned = []
    for target in targets:
        disks = "".join(
            f"<disk name={quoteattr(t)} checkpoint='bitmap' bitmap={quoteattr(name)}/>"
            if t == target
            else f"<disk name={quoteattr(t)} checkpoint='no'/>"
            for t in all_targets
        )
        xml = (
            f"<domaincheckpoint><name>{escape(name)}</name><creationTime>1</creationTime>"
            f"<disks>{disks}</disks></domaincheckpoint>"
        )
        try:
            adopted = dom.checkpointCreateXML(xml, flags)
        except libvirt.libvirtError:
            continue  # no such bitmap on this disk (validation refused): nothing to clean
        try:
            adopted.delete(0)
        except libvirt.libvirtError as err:
            raise LibvirtError(
                f"cannot remove the orphaned bitmap {name} of disk {target} of {dom.name()}: "
                f"{err.get_error_message()}"
            ) from None
        cleaned.append(target)
    return cleaned
