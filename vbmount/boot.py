"""``vbmount boot``/``unboot``: instant recovery, a VM running straight from its backup.

Per disk: nbdkit with our plugin (read-only) on a unix socket, and a qcow2
overlay whose backing file is that export; the domain is the saved vmconfig with
a new name, no UUID, no MAC addresses (libvirt makes new ones), no NVRAM path,
and each backed-up disk pointing at its overlay. Guest writes land in the
overlays; the backup set is never written::

    /var/tmp/vbmount-boot-<name>/        0755: QEMU (libvirt-qemu) must reach it
        vda.sock   nbdkit, owned by the QEMU user, 0600
        vda.qcow2  overlay, backing nbd+unix:///?socket=.../vda.sock (raw)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from vbbackup.chain import BackupSet
from vbbackup.errors import LibvirtError, MountError
from vbbackup.nbdio import proc
from vbbackup.nbdio.server import Export, NbdkitServer, give_socket_to_qemu, plugin_args
from vbbackup.virt import domainxml, libvirt_connection
from vbmount import resources
from vbmount.mounting import require_root

BOOT_ROOT = Path("/var/tmp")


@dataclass(frozen=True)
class BootConfig:
    directory: Path
    until: str | None = None
    name: str | None = None
    uri: str = "qemu:///system"
    start: bool = True
    isolated: bool = False  # verify --boot: no network, the console logged in the workdir


@dataclass(frozen=True)
class Booted:
    name: str
    started: bool
    overlays: dict[str, Path] = field(default_factory=dict)
    workdir: Path | None = None
    console: Path | None = None  # the serial console's log (isolated boots)
    point: str = ""  # the point in time booted (the first disk's)


def vmconfig_path(backup: BackupSet, until: str | None) -> Path:
    """The domain XML saved with the point in time (the newest file of the first disk)."""
    point = backup.resolve(backup.disks[0], until)
    path = backup.directory / f"vmconfig.{point.side_ident}.xml"
    if not path.is_file():
        raise MountError(f"no saved domain configuration {path.name} in {backup.directory}")
    return path


def restore_xml(
    xml: str,
    name: str,
    overlays: dict[str, Path],
    sockets: dict[str, Path],
    workdir: Path,
    console: Path | None = None,
) -> str:
    """The saved domain XML, made safe to run next to the original (see ``domainxml``);
    with ``console``, isolated for ``verify --boot`` (no network, serial logged there)."""
    root = domainxml.boot_xml(
        domainxml.parse_text(xml, "vmconfig"), name, overlays, sockets, workdir
    )
    if console is not None:
        domainxml.isolate(root)
        domainxml.serial_log(root, console)
    return domainxml.tostring(root)


def boot(config: BootConfig) -> Booted:
    require_root("vbmount boot")
    backup = BackupSet(config.directory)
    xml_path = vmconfig_path(backup, config.until)
    root = domainxml.parse(xml_path).getroot()
    original = root.findtext("name") or backup.directory.name
    name = config.name or f"{original}-restore"
    with libvirt_connection(config.uri) as conn:
        if name in (conn.listDefinedDomains() + [d.name() for d in conn.listAllDomains()]):
            raise MountError(f"domain {name} already exists (choose another with --name)")
        if resources.load("boot", name) is not None:
            raise MountError(f"{name} is still booted by vbmount: run vbmount unboot {name}")
        workdir = BOOT_ROOT / f"vbmount-boot-{name}"
        res = resources.Resources.new("boot", name, workdir)
        try:
            workdir.chmod(0o755)
            res.uri = config.uri
            overlays, sockets = _serve_disks(backup, config.until, workdir, res)
            console = workdir / "console.log" if config.isolated else None
            xml = restore_xml(xml_path.read_text(), name, overlays, sockets, workdir, console)
            try:
                dom = conn.defineXML(xml)
                res.domain = name
                res.save()
                if config.start:
                    dom.create()
            except libvirt.libvirtError as err:
                raise LibvirtError(f"domain {name}: {err.get_error_message()}") from None
        except OSError as err:
            _release_boot(res)
            raise MountError(f"{err.filename or 'boot'}: {err.strerror}") from None
        except BaseException:
            _release_boot(res)
            raise
    point = backup.resolve(backup.disks[0], config.until).name
    return Booted(name, config.start, overlays, workdir, console, point)


def _serve_disks(
    backup: BackupSet, until: str | None, workdir: Path, res: resources.Resources
) -> tuple[dict[str, Path], dict[str, Path]]:
    overlays, sockets = {}, {}
    for disk in backup.disks:
        point = backup.resolve(disk, until)
        socket = workdir / f"{disk}.sock"
        server = NbdkitServer(
            plugin_args(Export(backup.directory, disk, until)),
            workdir=workdir,
            socket=socket,
            name=f"nbdkit-{disk}",
        )
        with server:
            server.detach()
            res.add("servers", {"pid": server.pid, "marker": server.marker, "socket": str(socket)})
        give_socket_to_qemu(socket)
        overlay = workdir / f"{disk}.qcow2"
        proc.run_tool(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
             "-b", server.uri, str(overlay), str(point.virtual_size)],
            what=f"creating overlay {overlay}",
        )  # fmt: skip
        overlays[disk], sockets[disk] = overlay, socket
    return overlays, sockets


def unboot(name: str, uri: str | None = None) -> bool:
    """Destroy and undefine a domain `boot` made, stop its servers, remove its overlays."""
    require_root("vbmount unboot")
    res = resources.load("boot", name)
    if res is None:
        return False
    if uri is not None and res.uri is None:
        res.uri = uri
    _release_boot(res)
    return True


def _release_boot(res: resources.Resources) -> None:
    if res.domain is not None:
        with libvirt_connection(res.uri or "qemu:///system") as conn:
            _remove_domain(conn, res.domain)
    resources.release(res)


def _remove_domain(conn: libvirt.virConnect, name: str) -> None:
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return  # already gone
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    )
    try:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(flags)
    except libvirt.libvirtError as err:
        raise LibvirtError(f"removing domain {name}: {err.get_error_message()}") from None
