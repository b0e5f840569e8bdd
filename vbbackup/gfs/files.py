"""The guest's file systems and files at a point in time, through one libguestfs appliance.

Paths name a file the way an admin thinks of it:

    /etc/hostname                  in the guest's own layout (libguestfs inspection
                                   finds the OS and mounts its file systems as its
                                   fstab says, read-only)
    /dev/vg0/home:/alice/notes     on one file system, whatever mounts it
    btrfsvol:/dev/sda6/@data:/x    on a btrfs subvolume (as ``vbmount ls`` names it)

Everything is read-only: drives are added read-only and file systems mounted
with ``mount_ro``; nothing reaches the host kernel's file system code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from vbbackup.errors import MountError, TargetExistsError, UsageError
from vbbackup.fsutil import fsync_dir
from vbbackup.gfs.appliance import WORK_ROOT, OpenPoint
from vbbackup.nbdio.proc import last_line


@dataclass(frozen=True)
class GuestFilesystem:
    device: str  # as the appliance names it: /dev/sda1, /dev/vg0/root
    disk: str  # the backed-up disk it lies on ("" for an LV over several)
    fstype: str
    size: int
    label: str
    mountpoint: str  # where the guest mounts it ("" when inspection does not say)


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # file, dir, link, char, block, fifo, socket
    size: int
    mode: int  # permission bits
    mtime: int
    target: str = ""  # a link's target


@dataclass
class Inspection:
    """What libguestfs' inspection says of one operating system (virt-inspector's fields)."""

    root: str
    type: str
    distro: str
    product_name: str
    version: str
    hostname: str
    arch: str
    mountpoints: dict[str, str] = field(default_factory=dict)
    kernels: list[str] = field(default_factory=list)


_KINDS = {
    stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "link", stat.S_IFCHR: "char",
    stat.S_IFBLK: "block", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}  # fmt: skip


def filesystems(point: OpenPoint) -> list[GuestFilesystem]:
    """Every file system of the point with type, size, label and the guest's mount point."""
    g = point.g
    mounted_at = {}
    for root in point.os_roots():
        for where, device in g.inspect_get_mountpoints(root).items():
            mounted_at[g.canonical_device_name(device)] = where
    found = []
    for device, fstype in sorted(_with_subvolumes(g, g.list_filesystems()).items()):
        device = g.canonical_device_name(device)
        label = ""
        size = 0
        with contextlib.suppress(RuntimeError):
            label = g.vfs_label(device)
        with contextlib.suppress(RuntimeError):
            size = int(g.blockdev_getsize64(device))
        found.append(GuestFilesystem(device, _disk(point, device), fstype, size, label,
                                     mounted_at.get(device, "")))  # fmt: skip
    return found


def _with_subvolumes(g: Any, listed: dict[str, str]) -> dict[str, str]:
    """``list_filesystems`` plus any btrfs subvolume it left out: libguestfs 1.48 once in a
    while lists a btrfs device without its subvolumes (seen in CI, not reproducible)."""
    result = dict(listed)
    for device, fstype in listed.items():
        if fstype != "btrfs" or device.startswith("btrfsvol:"):
            continue
        if any(d.startswith(f"btrfsvol:{device}/") for d in listed):
            continue
        try:
            default = int(g.btrfs_subvolume_get_default(device))
            vols = g.btrfs_subvolume_list(device)
        except RuntimeError:
            continue  # listed as a file system, not mountable: ls shows it without subvolumes
        for vol in vols:
            if int(vol["btrfssubvolume_id"]) != default:
                result[f"btrfsvol:{device}/{vol['btrfssubvolume_path']}"] = "btrfs"
    return result


def _disk(point: OpenPoint, device: str) -> str:
    """The disk a file system lies on; an LV's are the disks of its segments (vda+vdb)."""
    if device.startswith("btrfsvol:"):  # btrfsvol:/dev/sda6/SUBVOLUME: the device's disk
        device = "/".join(device.removeprefix("btrfsvol:").split("/")[:3])
    disk = point.disk_of(device)
    if disk or not device.startswith("/dev/") or device.count("/") != 3:
        return disk
    out = _lv_devices(point.g, device)
    pvs = {part.split("(")[0].strip() for line in out.splitlines() for part in line.split(",")}
    disks = {point.disk_of(point.g.canonical_device_name(pv)) for pv in pvs if pv}
    return "+".join(sorted(d for d in disks if d))


# lvm in the appliance, without waiting for udev: under load (TCG, a busy CI machine) lvm
# may give up on a device udev has not initialized yet and report no segments for an LV
LVM_CONFIG = 'devices { obtain_device_list_from_udev = 0 external_device_info_source = "none" }'


def _lv_devices(g: Any, lv: str, attempts: int = 3) -> str:
    """lvs' devices column of one LV (libguestfs' lvs_full has no such field):
    ``/dev/sda2(0),/dev/sdb1(0)``; "" when lvm cannot say."""
    command = f"lvm lvs --config '{LVM_CONFIG}' --noheadings -o devices {lv}"
    for _ in range(attempts):
        try:
            out = str(g.debug("sh", [command]))
        except RuntimeError:
            continue
        if "/dev/" in out:
            return out
    return ""


def inspect(point: OpenPoint) -> list[Inspection]:
    """One record per operating system found (usually one); [] when none is."""
    g = point.g
    found = []
    for root in point.os_roots():
        info = Inspection(
            root=g.canonical_device_name(root),
            type=g.inspect_get_type(root),
            distro=g.inspect_get_distro(root),
            product_name=g.inspect_get_product_name(root),
            version=f"{g.inspect_get_major_version(root)}.{g.inspect_get_minor_version(root)}",
            hostname=g.inspect_get_hostname(root),
            arch=g.inspect_get_arch(root),
            mountpoints={
                where: g.canonical_device_name(dev)
                for where, dev in sorted(g.inspect_get_mountpoints(root).items())
            },
        )
        with _mounted_os(point, root):
            if info.type == "linux":
                info.kernels = sorted(
                    p.removeprefix("/boot/vmlinuz-") for p in g.glob_expand("/boot/vmlinuz-*")
                )
        found.append(info)
    return found


@contextlib.contextmanager
def _mounted_os(point: OpenPoint, root: str) -> Iterator[None]:
    g = point.g
    mountpoints = g.inspect_get_mountpoints(root)
    for where in sorted(mountpoints, key=len):  # / before /boot before /boot/efi
        try:
            g.mount_ro(mountpoints[where], where)
        except RuntimeError as err:
            if where == "/":
                raise MountError(f"cannot mount the guest's root {mountpoints[where]}: "
                                 f"{last_line(str(err))}") from None  # fmt: skip
    try:
        yield
    finally:
        g.umount_all()


@contextlib.contextmanager
def guest_view(point: OpenPoint, guest_path: str) -> Iterator[str]:
    """``guest_path`` mounted read-only; yields the path inside the appliance."""
    g = point.g
    device, sep, path = _split(guest_path)
    if sep:
        path = path or "/"
        if not path.startswith("/"):
            raise UsageError(f"{guest_path}: the path after the ':' must be absolute")
        try:
            g.mount_ro(device, "/")
        except RuntimeError as err:
            raise MountError(f"cannot mount {device}: {last_line(str(err))}") from None
        try:
            yield path
        finally:
            g.umount_all()
        return
    if not guest_path.startswith("/"):
        raise UsageError(f"{guest_path}: give an absolute guest path (/etc) or DEVICE:PATH")
    roots = point.os_roots()
    if not roots:
        raise MountError(
            "no operating system found on the disks, so no guest layout to follow: name a "
            "file system, e.g. /dev/sda1:/etc (vbmount ls DIR lists them)"
        )
    if len(roots) > 1:
        raise MountError(
            f"{len(roots)} operating systems found ({', '.join(roots)}): name the file "
            "system, e.g. /dev/sda1:/etc"
        )
    with _mounted_os(point, roots[0]):
        yield guest_path


def _split(guest_path: str) -> tuple[str, str, str]:
    """``DEVICE:PATH`` (DEVICE a /dev path or libguestfs' ``btrfsvol:/dev/sda6/@sub``)."""
    prefix = "btrfsvol:" if guest_path.startswith("btrfsvol:") else ""
    device, sep, path = guest_path[len(prefix) :].partition(":")
    if sep and device.startswith("/dev/"):
        return prefix + device, sep, path
    return "", "", guest_path


def list_dir(point: OpenPoint, guest_path: str) -> list[Entry]:
    """The entries of a guest directory (or the one entry of a file), sorted by name."""
    g = point.g
    with guest_view(point, guest_path) as path:
        if not g.exists(path):
            raise MountError(f"{guest_path}: no such file or directory in the guest")
        if not g.is_dir(path, followsymlinks=True):
            return [_entry(g, os.path.dirname(path) or "/", os.path.basename(path))]
        return [_entry(g, path, name) for name in sorted(g.ls(path))]


def _entry(g: Any, directory: str, name: str) -> Entry:
    full = f"{directory.rstrip('/')}/{name}"
    st = g.lstatns(full)
    kind = _KINDS.get(stat.S_IFMT(st["st_mode"]), "?")
    target = g.readlink(full) if kind == "link" else ""
    return Entry(name, kind, int(st["st_size"]), stat.S_IMODE(st["st_mode"]),
                 int(st["st_mtime_sec"]), target)  # fmt: skip


def get(point: OpenPoint, guest_paths: Sequence[str], dest: Path, force: bool = False) -> Path:
    """Copy files or directories out into the new directory ``dest`` (owner, mode and
    times kept); ``dest.partial`` until every one is complete, then renamed."""
    if dest.exists() and not force:
        raise TargetExistsError(f"{dest} exists; choose a new directory or give --force")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for guest_path in guest_paths:
            _copy_out(point, guest_path, partial)
        _fsync_tree(partial)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(partial, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dest


def _copy_out(point: OpenPoint, guest_path: str, into: Path) -> None:
    g = point.g
    with guest_view(point, guest_path) as path:
        if not g.exists(path) and not g.is_symlink(path):
            raise MountError(f"{guest_path}: no such file or directory in the guest")
        # tar-out of the parent, only this name: owner, mode, times and links as they are
        parent, name = os.path.dirname(path.rstrip("/")) or "/", os.path.basename(path.rstrip("/"))
        with tempfile.NamedTemporaryFile(dir=WORK_ROOT, prefix="vbmount-get-",
                                         suffix=".tar") as tar:  # fmt: skip
            if name:
                g.tar_out(parent, tar.name, numericowner=True, **_only(g, parent, name))
            else:  # the root of a file system
                g.tar_out("/", tar.name, numericowner=True)
            with tarfile.open(tar.name) as archive:
                safe_extract(archive, into)


def _only(g: Any, parent: str, name: str) -> dict[str, Any]:
    """tar-out takes a directory; everything of it but ``name`` is excluded."""
    others = [n for n in g.ls(parent) if n != name]
    return {"excludes": [f"./{n}" for n in others]} if others else {}


def safe_extract(archive: tarfile.TarFile, into: Path) -> None:
    """Extract a tar made from an untrusted guest: owner, mode (setuid too) and times kept,
    links kept as they are (absolute symlinks too), but no member may land outside
    ``into``: no absolute or ``..`` names, no writing through a symlink extracted
    before, no hard link to outside. (Debian's Python 3.11.2 has no extraction filters.)"""
    top = into.resolve()
    directories = []
    for member in archive:
        where = _inside(top, member.name)
        if member.islnk():
            _inside(top, member.linkname)
        if member.isdir():
            directories.append(member)
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            continue
        archive.extract(member, top, set_attrs=True, numeric_owner=True)
    for member in reversed(directories):  # after their contents: times stay as they were
        path = str(top / member.name)
        archive.chown(member, path, numeric_owner=True)
        archive.chmod(member, path)
        archive.utime(member, path)


def _inside(top: Path, name: str) -> Path:
    parts = Path(name).parts
    if not parts or parts == (".",):
        return top
    if name.startswith("/") or ".." in parts:
        raise MountError(f"the guest's tar stream names {name!r}: refused (outside the copy)")
    path = top.joinpath(*parts) if parts else top
    parent = path.parent.resolve()
    if parent != top and top not in parent.parents:
        raise MountError(f"the guest's tar stream writes {name!r} through a link: refused")
    return path


def write_tar(point: OpenPoint, guest_paths: Sequence[str], out: IO[bytes]) -> None:
    """The files as one tar stream (``--tar FILE`` or ``-``), owner/mode/times kept."""
    with tempfile.TemporaryDirectory(dir=WORK_ROOT, prefix="vbmount-get-") as work:
        staged = Path(work) / "files"
        staged.mkdir()
        for guest_path in guest_paths:
            _copy_out(point, guest_path, staged)
        with tarfile.open(fileobj=out, mode="w|") as archive:
            for child in sorted(staged.iterdir()):
                archive.add(child, arcname=child.name)


def _fsync_tree(top: Path) -> None:
    for dirpath, _, names in os.walk(top):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(dirpath))
