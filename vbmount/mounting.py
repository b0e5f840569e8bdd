"""``vbmount ls``/``mount``/``umount``: a point in time's file systems, read-only.

Per disk: nbdkit with our plugin on a unix socket, the export as a block source
(kernel nbd or a FUSE file, see ``blockdev``), then per file system a read-only
loop device at the partition's offset, mounted without journal replay. Every
step is recorded in the mount point's resource file as it happens; ``umount``
(and a failing ``mount``) undo exactly those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vbbackup.chain import BackupSet, open_view
from vbbackup.errors import MountError, UsageError
from vbbackup.nbdio.server import Export, NbdkitServer, plugin_args
from vbmount import blockdev, resources
from vbmount.partitions import MOUNT_OPTIONS, DiskLayout, Partition, read_layout


@dataclass(frozen=True)
class MountRequest:
    directory: Path
    mountpoint: Path
    disks: tuple[str, ...] = ()  # empty: every disk of the set
    until: str | None = None
    partition: int | None = None


@dataclass(frozen=True)
class Mounted:
    """One file system found: where it was mounted, or why it was not."""

    disk: str
    partition: Partition
    path: Path | None
    note: str = ""


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise MountError(f"{what} must run as root")


def disk_names(directory: Path, disks: tuple[str, ...]) -> tuple[str, ...]:
    backup = BackupSet(directory)
    return tuple(backup.check_disk(d) for d in disks) if disks else backup.disks


def read_layouts(
    directory: Path, disks: tuple[str, ...] = (), until: str | None = None
) -> dict[str, DiskLayout]:
    """Partitions and file systems of each disk at `until`, read straight from the chain."""
    layouts = {}
    for disk in disk_names(directory, disks):
        with open_view(directory, disk, until) as view:
            layouts[disk] = read_layout(view.read, view.size)
    return layouts


def _plan(req: MountRequest, layouts: dict[str, DiskLayout]) -> list[Mounted]:
    """Which file system goes where (path None: skipped, with the reason)."""
    if req.partition is not None:
        if len(layouts) != 1:
            raise UsageError("--partition needs one disk: choose it with --disk")
        ((disk, layout),) = layouts.items()
        numbers = [p.number for p in layout.partitions]
        if req.partition not in numbers:
            known = ", ".join(map(str, numbers))
            raise MountError(f"{disk} has no partition {req.partition} (partitions: {known})")
        part = layout.partitions[numbers.index(req.partition)]
        if not part.mountable:
            raise MountError(f"{_label(disk, part)}: unsupported filesystem {part.filesystem}")
        return [Mounted(disk, part, req.mountpoint)]
    plan = []
    for disk, layout in layouts.items():
        for part in layout.partitions:
            if part.mountable:
                plan.append(Mounted(disk, part, req.mountpoint / _label(disk, part)))
            else:
                plan.append(Mounted(disk, part, None, f"{part.filesystem}, not mounted"))
    if not any(m.path for m in plan):
        raise MountError(f"no mountable filesystem in {req.directory} (see vbmount ls)")
    return plan


def _label(disk: str, part: Partition) -> str:
    return disk if part.number == 0 else f"{disk}{part.number}"


def check_mountpoint(mountpoint: Path) -> None:
    if resources.load("mount", str(mountpoint)) is not None:
        raise MountError(f"{mountpoint} is in use by vbmount: run vbmount umount {mountpoint}")
    if blockdev.mounted_below(mountpoint):
        raise MountError(f"mountpoint busy: something is mounted at {mountpoint}")
    if mountpoint.exists():
        if not mountpoint.is_dir():
            raise MountError(f"mountpoint {mountpoint} is not a directory")
        if any(mountpoint.iterdir()):
            raise MountError(f"mountpoint busy: {mountpoint} is not empty")


def mount_backup(req: MountRequest) -> list[Mounted]:
    """Mount the request's file systems; serving processes keep running after we return."""
    require_root("vbmount mount")
    req = MountRequest(
        req.directory.resolve(), Path(os.path.abspath(req.mountpoint)),
        req.disks, req.until, req.partition,
    )  # fmt: skip
    check_mountpoint(req.mountpoint)
    plan = _plan(req, read_layouts(req.directory, req.disks, req.until))
    if not blockdev.kernel_nbd_available() and not blockdev.fuse_available():
        raise MountError("no FUSE here (/dev/fuse missing) and no kernel nbd (/dev/nbd*)")
    res = resources.Resources.new("mount", str(req.mountpoint))
    try:
        if not req.mountpoint.exists():
            req.mountpoint.mkdir(parents=True)
            res.add("dirs", str(req.mountpoint))
        for disk in dict.fromkeys(m.disk for m in plan if m.path):
            source = _serve_disk(req, disk, res)
            for item in plan:
                if item.disk == disk and item.path is not None:
                    _mount_one(source, item, res)
    except OSError as err:
        resources.release(res)
        raise MountError(f"{err.filename or 'mount'}: {err.strerror}") from None
    except BaseException:
        resources.release(res)
        raise
    return plan


def _serve_disk(req: MountRequest, disk: str, res: resources.Resources) -> str:
    """nbdkit for `disk`, shown as a block source; the path of that source."""
    workdir = Path(res.workdir)
    server = NbdkitServer(
        plugin_args(Export(req.directory, disk, req.until)),
        workdir=workdir,
        socket=workdir / f"{disk}.sock",
        name=f"nbdkit-{disk}",
    )
    with server:
        server.detach()
        res.add("servers", {"pid": server.pid, "marker": server.marker, "socket": server.marker})
    if blockdev.kernel_nbd_available():
        device = blockdev.connect_kernel_nbd(server.uri)
        res.add("nbd_devices", device)
        return device
    fuse_dir = workdir / f"fuse-{disk}"
    path, pid = blockdev.start_nbdfuse(
        workdir / f"{disk}.sock", fuse_dir, workdir, f"nbdfuse-{disk}"
    )
    res.add("fuse", {"dir": str(fuse_dir), "pid": pid})
    return path


def _mount_one(source: str, item: Mounted, res: resources.Resources) -> None:
    if item.path is None:
        return
    device = blockdev.attach_loop(source, item.partition.start, item.partition.size)
    res.add("loops", {"device": device, "backing": source})
    if not item.path.exists():
        item.path.mkdir()
        res.add("dirs", str(item.path))
    fstype, options = MOUNT_OPTIONS[item.partition.filesystem]
    blockdev.mount_ro(device, item.path, fstype, options)
    res.add("mounts", str(item.path))


def umount_backup(mountpoint: Path) -> bool:
    """Tear down what ``mount_backup`` started at `mountpoint`; False if nothing was there."""
    require_root("vbmount umount")
    res = resources.load("mount", os.path.abspath(mountpoint))
    if res is None:
        return False
    resources.release(res)
    return True
