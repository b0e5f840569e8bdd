"""The block layer between an NBD export and a mounted file system.

    nbdkit --unix S ──> nbdfuse DIR/disk (a FUSE file)   ──> losetup -r -o OFF ──> mount -o ro
                   └──> qemu-nbd -c /dev/nbdN (kernel nbd) ┘   --sizelimit SIZE

Kernel nbd only where /dev/nbd* exists; otherwise a FUSE file. Both show the
whole disk; a read-only loop device at the partition's offset carves out one
file system (loop partition scanning is not relied on: it makes no nodes in
containers). Every undo here is harmless when the thing is already gone.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from vbbackup.errors import MountError
from vbbackup.nbdio import proc

FUSE_FILE = "disk"
DETACH_TIMEOUT = 30.0


def kernel_nbd_available() -> bool:
    return bool(glob.glob("/dev/nbd[0-9]*"))


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse")


# -- mount table ----------------------------------------------------------------------


def _unescape(field: str) -> str:
    """Mount points in /proc/self/mountinfo escape space, tab, newline and backslash."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f]


def is_mounted(path: Path | str) -> bool:
    return os.path.abspath(path) in mount_points()


def mounted_below(path: Path | str) -> list[str]:
    """Mount points at or below `path`."""
    root = os.path.abspath(path)
    return [m for m in mount_points() if m == root or m.startswith(root.rstrip("/") + "/")]


def mount_ro(device: str, target: Path, fstype: str, options: str) -> None:
    proc.run_tool(
        ["mount", "-t", fstype, "-o", options, device, str(target)],
        what=f"mounting {fstype} at {target}",
    )


def unmount(target: Path | str) -> None:
    while is_mounted(target):
        proc.run_tool(["umount", str(target)], what=f"unmounting {target}")


# -- loop devices ---------------------------------------------------------------------


def attach_loop(backing: str, offset: int, size: int) -> str:
    """A read-only loop device showing bytes [offset, offset+size) of `backing`."""
    out = proc.run_tool(
        ["losetup", "--read-only", "--find", "--show", "--offset", str(offset),
         "--sizelimit", str(size), backing],
        what="losetup",
    )  # fmt: skip
    return out.strip()


def loop_backing(device: str) -> str | None:
    name = Path(device).name
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip()
    except FileNotFoundError:
        return None


def detach_loop(device: str, backing: str) -> None:
    """Detach `device` if it still shows `backing` (loop numbers are reused)."""
    if loop_backing(device) != backing:
        return
    proc.run_tool(["losetup", "--detach", device], what=f"detaching {device}")
    # The kernel finishes a detach when the last opener is gone, maybe after losetup
    # returned; until then the loop still holds the FUSE file open.
    deadline = time.monotonic() + DETACH_TIMEOUT
    while loop_backing(device) == backing:
        if time.monotonic() > deadline:
            raise MountError(f"{device} is still attached to {backing}")
        time.sleep(0.02)


# -- nbdfuse --------------------------------------------------------------------------


def start_nbdfuse(uri_socket: Path, directory: Path, workdir: Path, name: str) -> tuple[str, int]:
    """Show the export on `uri_socket` as the file `directory/disk`; return (file, pid)."""
    if not fuse_available():
        raise MountError("no FUSE here (/dev/fuse missing) and no kernel nbd (/dev/nbd*)")
    directory.mkdir(mode=0o700, exist_ok=True)
    pid = proc.spawn_daemon(
        ["nbdfuse", "--readonly", "--pidfile", workdir / f"{name}.pid",
         directory / FUSE_FILE, "--unix", uri_socket],
        pidfile=workdir / f"{name}.pid",
        log=workdir / f"{name}.log",
    )  # fmt: skip
    return str(directory / FUSE_FILE), pid


def stop_nbdfuse(directory: Path, pid: int) -> None:
    """Unmount the FUSE directory; nbdfuse exits by itself then."""
    if is_mounted(directory):
        proc.run_tool(["fusermount3", "-u", str(directory)], what=f"unmounting {directory}")
    proc.wait_gone(pid, str(directory))
    proc.terminate(pid, str(directory))


def stop_guestmount(mountpoint: Path, pid: int) -> None:
    """guestunmount (it retries while the tree is busy); guestmount and its appliance exit."""
    if is_mounted(mountpoint):
        proc.run_tool(["guestunmount", str(mountpoint)], what=f"unmounting {mountpoint}")
    if not proc.wait_gone(pid, "guestmount"):
        proc.terminate(pid, "guestmount")


# -- kernel nbd -----------------------------------------------------------------------


def _free_nbd_device() -> str:
    for dev in sorted(glob.glob("/dev/nbd[0-9]*"), key=lambda d: int(d[8:])):
        if not os.path.exists(f"/sys/block/{Path(dev).name}/pid"):
            return dev
    raise MountError("every /dev/nbd* device is in use")


def connect_kernel_nbd(uri: str) -> str:
    """Attach the export to a free /dev/nbdN, read-only (qemu-nbd forks and returns)."""
    device = _free_nbd_device()
    proc.run_tool(
        ["qemu-nbd", "--read-only", "--format=raw", f"--connect={device}", uri],
        what=f"qemu-nbd --connect={device}",
    )
    return device


def disconnect_kernel_nbd(device: str) -> None:
    if os.path.exists(f"/sys/block/{Path(device).name}/pid"):
        proc.run_tool(["qemu-nbd", "--disconnect", device], what=f"qemu-nbd --disconnect {device}")
