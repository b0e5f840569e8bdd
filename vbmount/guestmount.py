"""``vbmount mount``: a browsable read-only tree of the guest through libguestfs' FUSE mount.

Each disk of the point is served by our plugin on a unix socket; ``guestmount
--ro`` adds them all to one appliance and mounts the guest's own layout (``-i``:
inspection, as its fstab says) or the file systems named with ``--filesystem``
(guestmount's ``-m DEVICE[:MOUNTPOINT]``). The guest's file system code runs in
the appliance, not in the host kernel. guestmount forks into the background once
the tree is mounted; ``vbmount umount`` (guestunmount, then the servers) ends it::

    /run/vbmount/mount-<hash>/      vda.sock, vdb.sock, guestmount.pid, guestmount.log
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from vbbackup.chain import BackupSet
from vbbackup.errors import MountError
from vbbackup.gfs.appliance import backend_settings
from vbbackup.nbdio import proc
from vbbackup.nbdio.server import Export, NbdkitServer, plugin_args
from vbmount import resources
from vbmount.mounting import check_mountpoint, require_root

MOUNT_TIMEOUT = 900.0  # a TCG appliance over slow storage


def mount_guest(
    directory: Path,
    mountpoint: Path,
    until: str | None,
    filesystems: Sequence[str],
    say: Callable[[str], None],
) -> list[str]:
    """Mount; returns what was mounted (``-i``'s layout, or the --filesystem specs)."""
    require_root("vbmount mount")
    directory, mountpoint = directory.resolve(), Path(os.path.abspath(mountpoint))
    check_mountpoint(mountpoint)
    backup = BackupSet(directory)
    for disk in backup.disks:
        backup.resolve(disk, until)  # the chain's refusal before anything starts
    settings = backend_settings(say)
    res = resources.Resources.new("mount", str(mountpoint))
    try:
        if not mountpoint.exists():
            mountpoint.mkdir(parents=True)
            res.add("dirs", str(mountpoint))
        workdir = Path(res.workdir)
        argv = ["guestmount", "--ro", "--format=raw", "--pid-file", str(workdir / "gm.pid")]
        for disk in backup.disks:
            socket = workdir / f"{disk}.sock"
            server = NbdkitServer(plugin_args(Export(directory, disk, until)), workdir=workdir,
                                  socket=socket, name=f"nbdkit-{disk}")  # fmt: skip
            with server:
                server.detach()
                res.add("servers", {"pid": server.pid, "marker": server.marker,
                                    "socket": str(socket)})  # fmt: skip
            argv += ["-a", f"nbd://?socket={socket}"]  # libguestfs' URI form
        for spec in filesystems:
            argv += ["-m", spec]
        argv += [] if filesystems else ["-i"]
        env = {**os.environ}
        env.setdefault("LIBGUESTFS_BACKEND", "direct")
        if settings:
            env["LIBGUESTFS_BACKEND_SETTINGS"] = ",".join(settings)
        log = workdir / "guestmount.log"
        with open(log, "ab") as out:
            done = subprocess.run(
                [*argv, str(mountpoint)], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=env, check=False, timeout=MOUNT_TIMEOUT,
            )  # fmt: skip
        if done.returncode != 0:
            raise MountError(_failure(proc.read_log(log), bool(filesystems)))
        pid = int((workdir / "gm.pid").read_text().strip())
        res.add("guestmounts", {"mountpoint": str(mountpoint), "pid": pid})
    except BaseException:
        resources.release(res)
        raise
    return list(filesystems) or ["the guest's own layout (inspection)"]


def _failure(log: str, named: bool) -> str:
    if not named and "no operating system" in log.lower():
        return (
            "no operating system found on the disks, so no guest layout to mount: name "
            "file systems with --filesystem DEVICE[:MOUNTPOINT] (vbmount ls DIR lists them)"
        )
    return f"guestmount: {proc.last_line(log)}"
