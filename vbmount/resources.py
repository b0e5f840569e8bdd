"""What a ``mount`` or ``boot`` started, recorded on disk so a later command undoes it.

One JSON file per mount point or booted domain under /run/vbmount/ (the
``VBMOUNT_STATE`` variable moves it, for tests). Each resource is recorded the
moment it exists, so a command that fails half-way, or is killed, still leaves
a record that ``release`` (via ``umount``/``unboot``) tears down completely::

    /run/vbmount/mount-<hash>.json    {"key": "/mnt/x", "workdir": ..., "servers": [...],
                                       "fuse": [...], "loops": [...], "mounts": [...]}
    /run/vbmount/mount-<hash>/        sockets, pid files, logs, FUSE directories
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vbbackup.fsutil import write_small_file
from vbbackup.nbdio.server import stop_server
from vbmount import blockdev


def state_root() -> Path:
    return Path(os.environ.get("VBMOUNT_STATE", "/run/vbmount"))


@dataclass
class Resources:
    """Everything one command started, in start order; undone in reverse."""

    kind: str  # "mount" or "boot"
    key: str  # absolute mount point, or domain name
    workdir: str
    servers: list[dict[str, str | int]] = field(default_factory=list)  # pid, marker, socket
    nbd_devices: list[str] = field(default_factory=list)
    fuse: list[dict[str, str | int]] = field(default_factory=list)  # dir, pid
    loops: list[dict[str, str]] = field(default_factory=list)  # device, backing
    dirs: list[str] = field(default_factory=list)  # created by us; removed when empty
    mounts: list[str] = field(default_factory=list)
    guestmounts: list[dict[str, str | int]] = field(default_factory=list)  # mountpoint, pid
    domain: str | None = None
    uri: str | None = None  # libvirt connection of `domain`

    @classmethod
    def new(cls, kind: str, key: str, workdir: Path | None = None) -> Resources:
        res = cls(kind, key, str(workdir or state_path(kind, key).with_suffix("")))
        Path(res.workdir).mkdir(mode=0o755, parents=True, exist_ok=True)
        res.save()
        return res

    def save(self) -> None:
        path = state_path(self.kind, self.key)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_small_file(path, json.dumps(asdict(self), indent=2).encode())

    def add(self, kind: str, item: object) -> None:
        getattr(self, kind).append(item)
        self.save()


def state_path(kind: str, key: str) -> Path:
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return state_root() / f"{kind}-{digest}.json"


def load(kind: str, key: str) -> Resources | None:
    try:
        data = json.loads(state_path(kind, key).read_text())
    except FileNotFoundError:
        return None
    return Resources(**data)


def load_all(kind: str) -> list[Resources]:
    found = []
    for path in sorted(state_root().glob(f"{kind}-*.json")):
        with contextlib.suppress(FileNotFoundError, ValueError):
            found.append(Resources(**json.loads(path.read_text())))
    return found


def release(res: Resources) -> None:
    """Undo everything in `res` (mounts, loops, nbd, FUSE, servers, dirs), then forget it.

    Idempotent: each step checks that its resource is still there and still ours.
    """
    for target in reversed(res.mounts):
        blockdev.unmount(target)
    for gm in reversed(res.guestmounts):
        blockdev.stop_guestmount(Path(str(gm["mountpoint"])), int(gm["pid"]))
    for loop in reversed(res.loops):
        blockdev.detach_loop(loop["device"], loop["backing"])
    for device in reversed(res.nbd_devices):
        blockdev.disconnect_kernel_nbd(device)
    for fuse in reversed(res.fuse):
        blockdev.stop_nbdfuse(Path(str(fuse["dir"])), int(fuse["pid"]))
    for server in reversed(res.servers):
        socket = Path(str(server["socket"])) if server.get("socket") else None
        stop_server(int(server["pid"]), str(server["marker"]), socket)
    for directory in reversed(res.dirs):
        with contextlib.suppress(FileNotFoundError, OSError):
            os.rmdir(directory)
    shutil.rmtree(res.workdir, ignore_errors=True)
    state_path(res.kind, res.key).unlink(missing_ok=True)
