"""The one domain-XML module: the disks and boot files a domain XML names, and the rewrites.

Backup reads the live domain's disks and boot files here; restore and boot
read the XML saved with a backup and rewrite it here.

``--adjust-config`` turns the XML saved with a backup into one that can be
defined next to the original domain::

    <uuid>           removed (libvirt makes a new one)
    <name>           restore_<name>, or --name
    <disk device='disk'> of a restored target: <source file=OUTDIR/image>,
                     <driver type=fmt>, no <backingStore>
    any other <disk> (excluded, not backed up, cdrom, floppy): removed
    <os><nvram|kernel|initrd|loader>: the restored boot file, where one was restored

Both rewrites (restore's and boot's) make the copy independent of a running
original (`detach_host_files`): the files and sockets a domain owns on the host
are per domain, and the XML of a running domain names the original's::

    <serial|console|parallel|channel> <log file=...>   -> HOSTDIR/<name>-<dev><n>.log
    ... type='file' <source path=...>                    -> HOSTDIR/<name>-<dev><n>.out
    ... type='pty' <source path='/dev/pts/N'>            dropped (QEMU opens a new pty)
    ... type='unix' <source path=...> (mode=bind)        dropped (libvirt picks a path)
    <target state='connected'>                           state dropped (live only)
    <console> duplicating <serial>                       its source and log dropped
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from vbbackup.errors import VbError

BOOT_ELEMENTS = ("loader", "nvram", "kernel", "initrd")


@dataclass(frozen=True)
class DomainDisk:
    """One ``<disk>`` of the domain XML."""

    target: str
    device: str  # disk, cdrom, floppy, lun
    type: str  # file, block, network, volume
    format: str  # qcow2, raw, ... ("" when not given)
    path: str | None  # file or block device; None for network and pool volumes, empty drives
    has_medium: bool = True  # False for an empty drive (no <source>)
    source_name: str | None = None  # a network or pool volume's name (restore names images by it)

    @property
    def removable(self) -> bool:
        return self.device in ("cdrom", "floppy")

    @property
    def bitmap_capable(self) -> bool:
        """Whether checkpoints (dirty bitmaps) are possible: qcow2, not a LUN."""
        return self.format == "qcow2" and self.device == "disk"


def domain_disks(xml: str | bytes | etree._ElementTree) -> list[DomainDisk]:
    """Every disk of a domain XML document, in document order."""
    if isinstance(xml, etree._ElementTree):
        root = xml.getroot()
    else:
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
                source_name=source.get("name") if source is not None else None,
            )
        )
    return disks


def parse(path: Path) -> etree._ElementTree:
    try:
        return etree.parse(str(path), etree.XMLParser(remove_blank_text=False))
    except (OSError, etree.XMLSyntaxError) as err:
        raise VbError(f"{path}: cannot read the saved domain XML: {err}") from None


def parse_text(xml: str, what: str) -> etree._Element:
    """A domain XML held in memory; ``what`` names it in the one-line error."""
    try:
        return etree.fromstring(xml.encode())
    except etree.XMLSyntaxError as err:
        raise VbError(f"{what}: cannot read the saved domain XML: {err}") from None


def domain_name(tree: etree._ElementTree) -> str:
    return str(tree.findtext("name") or "")


def saved_disks(tree: etree._ElementTree) -> dict[str, DomainDisk]:
    """Disks by target dev, as the domain had them at backup time."""
    return {d.target: d for d in domain_disks(tree)}


def boot_files(tree: etree._ElementTree | str | bytes) -> dict[str, str]:
    """``<os>`` files (loader, nvram, kernel, initrd) by element name."""
    if not isinstance(tree, etree._ElementTree):
        tree = etree.ElementTree(etree.fromstring(tree.encode() if isinstance(tree, str) else tree))
    found = {}
    for name in BOOT_ELEMENTS:
        text = tree.findtext(f"os/{name}")
        if text and text.strip():
            found[name] = text.strip()
    return found


def adjust(
    tree: etree._ElementTree,
    name: str,
    images: Mapping[str, tuple[Path, str]],
    boot: Mapping[str, Path],
    host_dir: Path,
) -> bytes:
    """The rewritten XML (see the module docstring); ``images``: target -> (path, format);
    ``host_dir``: where the copy's console logs go (the restore's output directory)."""
    root = _renamed_copy(tree, name)
    detach_host_files(root, host_dir)
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        dev = str(target.get("dev")) if target is not None else ""
        if dev not in images or disk.get("device", "disk") != "disk":
            parent = disk.getparent()
            if parent is not None:
                parent.remove(disk)
            continue
        path, fmt = images[dev]
        _point_disk_at(disk, path, fmt)
    os_el = root.find("os")
    for element, path in boot.items():
        node = os_el.find(element) if os_el is not None else None
        if node is not None:
            node.text = str(path)
    return etree.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


CHAR_DEVICES = ("serial", "console", "parallel", "channel")


def detach_host_files(root: etree._Element, host_dir: Path) -> list[Path]:
    """Re-point or drop what the copy would share with the original (see the docstring);
    the log/output files now named, in ``host_dir`` and named after the new domain."""
    name = root.findtext("name") or "domain"
    named: list[Path] = []
    devices = root.find("devices")
    if devices is None:
        return named
    for tag in CHAR_DEVICES:
        for n, dev in enumerate(devices.findall(tag)):
            target = dev.find("target")
            if target is not None and "state" in target.attrib:
                del target.attrib["state"]
            if tag == "console" and target is not None and target.get("type") == "serial":
                for child in dev.findall("source") + dev.findall("log"):
                    dev.remove(child)  # libvirt copies the <serial> it duplicates
                continue
            for log in dev.findall("log"):
                path = host_dir / f"{name}-{tag}{n}.log"
                log.set("file", str(path))
                named.append(path)
            kind = dev.get("type")
            for source in dev.findall("source"):
                if kind == "file":
                    path = host_dir / f"{name}-{tag}{n}.out"
                    source.set("path", str(path))
                    named.append(path)
                elif kind in ("pty", "unix") and source.get("mode", "bind") == "bind":
                    dev.remove(source)
    return named


def serial_log(root: etree._Element, path: Path) -> None:
    """The first serial port logs to ``path`` (one is added when the domain has none):
    ``verify --boot`` reads the console from there."""
    devices = root.find("devices")
    if devices is None:
        raise VbError("the saved domain configuration has no <devices>")
    serial = devices.find("serial")
    if serial is None:
        serial = etree.SubElement(devices, "serial", type="pty")
        etree.SubElement(serial, "target", port="0")
    for log in serial.findall("log"):
        serial.remove(log)
    etree.SubElement(serial, "log", file=str(path), append="off")


def isolate(root: etree._Element) -> None:
    """No network (``verify --boot``: a booted backup must not meet the original's
    network with its addresses), BIOS messages on the serial port."""
    devices = root.find("devices")
    for iface in devices.findall("interface") if devices is not None else []:
        if devices is not None:
            devices.remove(iface)
    os_el = root.find("os")
    if os_el is not None and os_el.find("loader") is None and os_el.find("bios") is None:
        etree.SubElement(os_el, "bios", useserial="yes")


def tostring(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode")


def _renamed_copy(tree: etree._ElementTree | etree._Element, name: str) -> etree._Element:
    """A copy of the domain XML as a new domain: ``name``, no UUID, no live ``id``."""
    root = etree.fromstring(etree.tostring(tree))
    for uuid in root.findall("uuid"):
        root.remove(uuid)
    name_el = root.find("name")
    if name_el is None:
        name_el = etree.SubElement(root, "name")
    name_el.text = name
    if "id" in root.attrib:
        del root.attrib["id"]
    return root


def _point_disk_at(disk: etree._Element, path: Path, fmt: str) -> None:
    """A file image, or a block device (``restore --target vda=/dev/...``)."""
    try:
        block = stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        block = False
    disk.set("type", "block" if block else "file")
    for child in disk.findall("backingStore") + disk.findall("source"):
        disk.remove(child)
    driver = disk.find("driver")
    if driver is None:
        driver = etree.SubElement(disk, "driver", name="qemu")
    driver.set("type", fmt)
    source = etree.Element("source", {"dev" if block else "file": str(path)})
    source.tail = driver.tail
    driver.addnext(source)


def boot_xml(
    root: etree._Element,
    name: str,
    overlays: Mapping[str, Path],
    sockets: Mapping[str, Path],
    host_dir: Path,
) -> etree._Element:
    """``vbmount boot``: the saved XML running on qcow2 overlays over NBD exports.

    Safe next to the original: a new name, no UUID, NVRAM or MAC addresses, and
    every disk that is not served removed (never open a live disk of the original).
    """
    root = _renamed_copy(root, name)
    detach_host_files(root, host_dir)
    for parent_path, tag in (("os", "nvram"), ("devices/interface", "mac")):
        for parent in root.findall(parent_path):
            for child in parent.findall(tag):
                parent.remove(child)
    devices = root.find("devices")
    if devices is None:
        raise VbError("the saved domain configuration has no <devices>")
    for disk in devices.findall("disk"):
        target = disk.find("target")
        dev = target.get("dev") if target is not None else None
        if disk.get("device", "disk") != "disk":
            continue
        if dev is None or dev not in overlays:
            devices.remove(disk)
            continue
        _point_disk_at_overlay(disk, overlays[dev], sockets[dev])
    return root


def _point_disk_at_overlay(disk: etree._Element, overlay: Path, socket: Path) -> None:
    disk.set("type", "file")
    driver = disk.find("driver")
    if driver is None:
        driver = etree.SubElement(disk, "driver", name="qemu")
    driver.set("type", "qcow2")
    for tag in ("source", "backingStore", "auth", "readonly", "shareable"):
        for elem in disk.findall(tag):
            disk.remove(elem)
    etree.SubElement(disk, "source", file=str(overlay))
    backing = etree.SubElement(disk, "backingStore", type="network")
    etree.SubElement(backing, "format", type="raw")
    source = etree.SubElement(backing, "source", protocol="nbd")
    etree.SubElement(source, "host", transport="unix", socket=str(socket))
    etree.SubElement(backing, "backingStore")


def stop_on_io_errors(xml: bytes) -> bytes:
    """The domain XML with every disk's read and write error policy 'stop': a live restore's
    guest pauses (instead of seeing EIO) while the backup it still reads is unreachable."""
    root = etree.fromstring(xml)
    for disk in root.findall("devices/disk"):
        driver = disk.find("driver")
        if driver is None:
            driver = etree.SubElement(disk, "driver", name="qemu")
        driver.set("error_policy", "stop")
        driver.set("rerror_policy", "stop")
    return etree.tostring(root, encoding="utf-8") + b"\n"


def backed_targets(live_xml: str) -> set[str]:
    """Targets of the disks that still read from a backing image (a ``<backingStore>``
    with a source) in a running domain's XML."""
    root = etree.fromstring(live_xml.encode())
    found = set()
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        backing = disk.find("backingStore")
        if target is not None and backing is not None and backing.find("source") is not None:
            found.add(str(target.get("dev")))
    return found


def disk_sources(xml: str) -> dict[str, str]:
    """Every disk's target and the file or network source it names (or "")."""
    root = etree.fromstring(xml.encode())
    found = {}
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        if target is None:
            continue
        source = disk.find("source")
        where = ""
        if source is not None:
            where = source.get("file") or source.get("dev") or source.get("name") or ""
        found[str(target.get("dev"))] = where
    return found


AGENT_CHANNEL = "org.qemu.guest_agent.0"


def agent_connected(live_xml: str) -> bool:
    """The running domain's guest agent channel says a guest agent is connected."""
    root = etree.fromstring(live_xml.encode())
    for target in root.findall("devices/channel/target"):
        if target.get("name") == AGENT_CHANNEL and target.get("state") == "connected":
            return True
    return False


def emulated_tpms(xml: str) -> list[str]:
    """Models of the domain's swtpm-backed vTPMs (``<tpm><backend type='emulator'>``)."""
    root = etree.fromstring(xml.encode())
    return [
        str(tpm.get("model") or "tpm")
        for tpm in root.findall("devices/tpm")
        if (backend := tpm.find("backend")) is not None and backend.get("type") == "emulator"
    ]
