"""The domain's backup checkpoints: names per chain, identity, list, delete, dump, redefine.

A checkpoint is libvirt metadata plus one persistent dirty bitmap per disk in
the qcow2 images. Deleting one with flags 0 removes both (with
``METADATA_ONLY`` the bitmaps would stay and keep costing on every write).

Each chain has names of its own, so that several chains of one domain (a
daily and a monthly set, two backup hosts) live side by side; every bitmap
records writes since its own checkpoint, independently of the others::

    vbbackup.3f9a1c2e.0, vbbackup.3f9a1c2e.1 ...   a chain vbbackup started (id 3f9a1c2e)
    virtnbdbackup.0, virtnbdbackup.1 ...           virtnbdbackup's (and older vbbackup sets')

The number after the last dot is the checkpoint's place in its chain, which is
what virtnbdrestore's ``--until`` relies on. A checkpoint's identity is its
``<creationTime>`` and, for our chains, the chain id in its ``<description>``:
the same name in libvirt and in a set's ``checkpoints/NAME.xml`` is the same
checkpoint only when both agree.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence

import libvirt
from lxml import etree

from vbbackup.errors import LibvirtError
from vbbackup.virt.connection import error_text
from vbbackup.virt.estimate import checkpoint_sizes
from vbbackup.virt.xmltext import escape, quoteattr

CHECKPOINT_PREFIX = "virtnbdbackup."
LEGACY_CHAIN = "virtnbdbackup"
_NAME = re.compile(r"^(virtnbdbackup|vbbackup\.[0-9a-f]{8})\.(\d+)$")
_DESCRIPTION = "vbbackup chain "


def new_chain_id() -> str:
    return secrets.token_hex(4)


def checkpoint_index(name: str) -> int | None:
    """N of ``virtnbdbackup.N`` or ``vbbackup.<id>.N``, None for any other name."""
    match = _NAME.match(name)
    return int(match.group(2)) if match else None


def chain_of(name: str) -> str | None:
    """The chain a checkpoint name belongs to: ``vbbackup.<id>``, ``virtnbdbackup``, or None."""
    match = _NAME.match(name)
    return match.group(1) if match else None


def checkpoint_name(index: int, chain: str = LEGACY_CHAIN) -> str:
    """Checkpoint ``index`` of ``chain`` (``vbbackup.<id>`` or ``virtnbdbackup``)."""
    return f"{chain}.{index}"


def following(name: str) -> str | None:
    """The name of the checkpoint after ``name`` in its chain."""
    chain, index = chain_of(name), checkpoint_index(name)
    return None if chain is None or index is None else checkpoint_name(index + 1, chain)


def checkpoint_xml(name: str, targets: Sequence[str], skip: Sequence[str]) -> str:
    """``<domaincheckpoint>`` with a bitmap for each of ``targets``, none for ``skip``."""
    disks = [f"<disk name={quoteattr(t)} checkpoint='bitmap'/>" for t in targets]
    disks += [f"<disk name={quoteattr(t)} checkpoint='no'/>" for t in skip]
    chain = chain_of(name)
    description = ""
    if chain and chain != LEGACY_CHAIN:
        description = f"<description>{escape(_DESCRIPTION + chain)}</description>"
    return (
        f"<domaincheckpoint><name>{escape(name)}</name>{description}"
        f"<disks>{''.join(disks)}</disks></domaincheckpoint>"
    )


def identity(xml: str) -> tuple[str, str]:
    """(creationTime, description) of a checkpoint's XML, as libvirt or a set holds it."""
    try:
        root = etree.fromstring(xml.encode())
    except etree.XMLSyntaxError as err:
        raise LibvirtError(f"unreadable checkpoint XML: {err}") from None
    return (root.findtext("creationTime") or "").strip(), (root.findtext("description") or "")


def identity_mismatch(name: str, saved_xml: str, live_xml: str) -> str | None:
    """Why libvirt's checkpoint ``name`` is not the one a set recorded, or None."""
    saved_time, saved_desc = identity(saved_xml)
    live_time, live_desc = identity(live_xml)
    if not saved_time:
        return f"the set's checkpoints/{name}.xml has no creationTime"
    if saved_time != live_time or saved_desc != live_desc:
        return (
            f"libvirt's checkpoint {name} (created {live_time or '?'}) is not the one this set "
            f"recorded (created {saved_time}): another chain reused the name"
        )
    return None


class Checkpoints:
    """The backup checkpoints of one domain (every chain's; see the module docstring)."""

    def __init__(self, dom: libvirt.virDomain) -> None:
        self.dom = dom

    def names(self, chain: str | None = None) -> list[str]:
        """Backup checkpoints (of ``chain`` only, if given), by chain, oldest first."""
        try:
            found = [cp.getName() for cp in self.dom.listAllCheckpoints()]
        except libvirt.libvirtError as err:
            raise LibvirtError(f"cannot list checkpoints: {error_text(err)}") from None
        ours = [(chain_of(n), checkpoint_index(n), n) for n in found]
        return [
            n
            for c, i, n in sorted((c, i, n) for c, i, n in ours if c is not None and i is not None)
            if chain is None or c == chain
        ]

    def exists(self, name: str) -> bool:
        return name in self.names()

    def delete(self, names: Iterable[str]) -> list[str]:
        """Delete checkpoints and their bitmaps, newest first; returns those deleted."""
        present = set(self.names())
        doomed = sorted(
            (n for n in set(names) if n in present),
            key=lambda n: (chain_of(n) or "", checkpoint_index(n) or 0),
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
