"""The domain's ``virtnbdbackup.N`` checkpoints: list, delete, dump, redefine.

A checkpoint is libvirt metadata plus one persistent dirty bitmap per disk in
the qcow2 images. Deleting one with flags 0 removes both (with
``METADATA_ONLY`` the bitmaps would stay and keep costing on every write).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import libvirt

from vbbackup.errors import LibvirtError
from vbbackup.virt.connection import error_text
from vbbackup.virt.estimate import checkpoint_sizes
from vbbackup.virt.xmltext import escape, quoteattr

CHECKPOINT_PREFIX = "virtnbdbackup."
_NAME = re.compile(r"^virtnbdbackup\.(\d+)$")


def checkpoint_index(name: str) -> int | None:
    """N of ``virtnbdbackup.N``, None for any other name."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def checkpoint_name(index: int) -> str:
    return f"{CHECKPOINT_PREFIX}{index}"


def checkpoint_xml(name: str, targets: Sequence[str], skip: Sequence[str]) -> str:
    """``<domaincheckpoint>`` with a bitmap for each of ``targets``, none for ``skip``."""
    disks = [f"<disk name={quoteattr(t)} checkpoint='bitmap'/>" for t in targets]
    disks += [f"<disk name={quoteattr(t)} checkpoint='no'/>" for t in skip]
    return (
        f"<domaincheckpoint><name>{escape(name)}</name>"
        f"<disks>{''.join(disks)}</disks></domaincheckpoint>"
    )


class Checkpoints:
    """The checkpoints of one domain that follow virtnbdbackup's naming."""

    def __init__(self, dom: libvirt.virDomain) -> None:
        self.dom = dom

    def names(self) -> list[str]:
        """Our checkpoints, oldest (lowest N) first."""
        try:
            found = [cp.getName() for cp in self.dom.listAllCheckpoints()]
        except libvirt.libvirtError as err:
            raise LibvirtError(f"cannot list checkpoints: {error_text(err)}") from None
        ours = [(checkpoint_index(n), n) for n in found]
        return [n for i, n in sorted((i, n) for i, n in ours if i is not None)]

    def exists(self, name: str) -> bool:
        return name in self.names()

    def delete(self, names: Iterable[str]) -> list[str]:
        """Delete checkpoints and their bitmaps, newest first; returns those deleted."""
        present = set(self.names())
        doomed = sorted(
            (n for n in set(names) if n in present),
            key=lambda n: checkpoint_index(n) or 0,
            reverse=True,
        )
        for name in doomed:
            # a checkpoint whose bitmap QEMU lost can only lose its metadata (backup_ops)
            intact = None not in checkpoint_sizes(self.dom, name).values()
            flags = 0 if intact else libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
            try:
                self.dom.checkpointLookupByName(name).delete(flags)
            except libvirt.libvirtError as err:
                raise LibvirtError(f"cannot delete checkpoint {name}: {error_text(err)}") from None
        return doomed

    def dump(self, name: str) -> str:
        """The XML ``virsh checkpoint-dumpxml`` prints (with the domain inside)."""
        try:
            return str(self.dom.checkpointLookupByName(name).getXMLDesc(0))
        except libvirt.libvirtError as err:
            raise LibvirtError(f"cannot read checkpoint {name}: {error_text(err)}") from None

    def redefine(self, xml: str) -> None:
        """Recreate lost metadata of a checkpoint whose bitmaps still exist in the images."""
        flags = (
            libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
            | libvirt.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
        )
        try:
            self.dom.checkpointCreateXML(xml, flags)
        except libvirt.libvirtError as err:
            raise LibvirtError(f"cannot redefine checkpoint: {error_text(err)}") from None
