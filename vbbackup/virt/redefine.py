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
