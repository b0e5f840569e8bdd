"""libguestfs over a point in time: the guest's file systems read in an appliance VM.

A guest's file systems are untrusted input: libguestfs runs their code in a small
VM, never in the host kernel. Every disk of the point is served by our plugin on a
unix socket and added read-only (libguestfs puts a throwaway overlay in front, so a
checker that repairs writes nothing anywhere that lasts); one appliance serves
all disks of the point, so an LV that spans two disks is whole::

    with open_point(directory, until, say) as point:
        point.g.list_filesystems()      # {"/dev/sda1": "ext4", ...}
        point.disk_of("/dev/sdb")       # "vdb"

Acceleration: libguestfs asks QEMU for KVM. Where a KVM appliance does not come up
(nested KVM that cannot run ``-cpu max``: it aborts or hangs), we fall back to TCG
with one line, found by a probe launch with a time limit whose answer is kept per
QEMU binary and kernel in ``ACCEL_CACHE``. ``LIBGUESTFS_BACKEND_SETTINGS`` set by
the user is left alone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vbbackup.chain import BackupSet
from vbbackup.errors import MountError, VbError
from vbbackup.nbdio.server import Export, NbdkitServer, plugin_args

ACCEL_CACHE = Path("/var/tmp/vbbackup-guestfs-accel")
PROBE_TIMEOUT = 60.0  # a KVM appliance starts in a few seconds on a real host
WORK_ROOT = Path("/var/tmp")
_PROBE = """
import guestfs
g = guestfs.GuestFS(python_return_dict=True)
g.add_drive_scratch(1024 * 1024)
g.launch()
g.shutdown()
g.close()
"""


def _import_guestfs() -> Any:
    try:
        import guestfs
    except ImportError:
        raise MountError(
            "libguestfs' Python bindings are missing: install python3-guestfs "
            "(and libguestfs-tools, linux-image-amd64 for its appliance)"
        ) from None
    return guestfs


def _accel_key() -> str:
    qemu = Path("/usr/bin/qemu-system-x86_64")
    stamp = int(qemu.stat().st_mtime) if qemu.exists() else 0
    return f"{platform.release()} {stamp} kvm={os.path.exists('/dev/kvm')}"


def backend_settings(say: Callable[[str], None]) -> list[str] | None:
    """None: libguestfs' own choice (KVM); ["force_tcg"] where KVM does not work here."""
    if os.environ.get("LIBGUESTFS_BACKEND_SETTINGS") is not None:
        return None  # the user's
    if not os.path.exists("/dev/kvm"):
        return None  # libguestfs takes TCG by itself
    key = _accel_key()
    with contextlib.suppress(OSError):
        cached_key, _, answer = ACCEL_CACHE.read_text().partition("\n")
        if cached_key == key:
            return ["force_tcg"] if answer.strip() == "tcg" else None
    works, why = _probe_kvm()
    with contextlib.suppress(OSError):
        ACCEL_CACHE.write_text(f"{key}\n{'kvm' if works else 'tcg'}\n")
    if works:
        return None
    say(f"libguestfs: the KVM appliance did not start ({why}); using TCG (slower)")
    return ["force_tcg"]


def _probe_kvm() -> tuple[bool, str]:
    env = {**os.environ, "LIBGUESTFS_BACKEND": os.environ.get("LIBGUESTFS_BACKEND", "direct")}
    probe = subprocess.Popen(
        [sys.executable, "-c", _PROBE],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        _, err = probe.communicate(timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(probe.pid, signal.SIGKILL)  # the appliance's QEMU too
        probe.communicate()
        return False, f"no answer within {PROBE_TIMEOUT:.0f} s"
    if probe.returncode == 0:
        return True, ""
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
    return False, lines[-1].strip() if lines else f"exit {probe.returncode}"


@dataclass
class OpenPoint:
    """A launched appliance over every disk of one point in time."""

    g: Any  # guestfs.GuestFS
    disks: dict[str, str] = field(default_factory=dict)  # appliance device -> disk target
    _roots: list[str] | None = None

    def os_roots(self) -> list[str]:
        """The operating systems' root devices (libguestfs inspection, done once: it mounts
        every file system, about 18 s under TCG)."""
        if self._roots is None:
            self._roots = list(self.g.inspect_os())
        return self._roots

    def disk_of(self, device: str) -> str:
        """The disk target (vda) of an appliance device or partition (/dev/sda1)."""
        for whole, target in self.disks.items():
            if device == whole or device.startswith(whole):
                return target
        return ""


@contextlib.contextmanager
def open_point(
    directory: Path, until: str | None, say: Callable[[str], None]
) -> Iterator[OpenPoint]:
    """Serve every disk of the point, launch one appliance, close both on the way out."""
    guestfs = _import_guestfs()
    backup = BackupSet(directory)
    settings = backend_settings(say)
    os.environ.setdefault("LIBGUESTFS_BACKEND", "direct")  # no libvirt domain for it
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vbbackup-gfs-",
                                                                    dir=WORK_ROOT)))  # fmt: skip
        g = guestfs.GuestFS(python_return_dict=True, close_on_exit=False)
        stack.callback(g.close)
        if settings:
            g.set_backend_settings(settings)
        targets = []
        for disk in backup.disks:
            backup.resolve(disk, until)  # a point each disk has, or the chain's refusal
            socket = work / f"{disk}.sock"
            server = NbdkitServer(plugin_args(Export(directory, disk, until)), socket=socket,
                                  workdir=work, tied=True, name=f"nbdkit-{disk}")  # fmt: skip
            stack.enter_context(server)
            g.add_drive_opts("", format="raw", readonly=True, protocol="nbd",
                             server=[f"unix:{socket}"])  # fmt: skip
            targets.append(disk)
        try:
            g.launch()
        except RuntimeError as err:
            raise VbError(f"libguestfs could not start its appliance: {err}") from None
        stack.callback(_shutdown, g)
        yield OpenPoint(g, dict(zip(g.list_devices(), targets, strict=True)))


def _shutdown(g: Any) -> None:
    with contextlib.suppress(RuntimeError):
        g.shutdown()
