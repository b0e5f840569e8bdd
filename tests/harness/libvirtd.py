"""Find what the real stack offers on this machine, and get libvirtd answering."""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

URI = "qemu:///system"
_PID_FILES = {"virtlogd": "/run/virtlogd.pid", "libvirtd": "/run/libvirtd.pid"}


class HarnessError(RuntimeError):
    """The real stack did something the harness did not expect."""


def _libvirt_answers() -> bool:
    if shutil.which("virsh") is None:
        return False
    try:
        done = subprocess.run(
            ["virsh", "-c", URI, "list", "--name"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _running(name: str) -> bool:
    try:
        with open(_PID_FILES[name]) as f:
            os.kill(int(f.read().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def ensure_libvirtd(timeout: float = 30.0) -> None:
    """Make qemu:///system answer: start virtlogd and libvirtd as daemons if they are not up.

    There is no systemd on the test machines, so nothing else starts them. Waits until
    virsh gets an answer (bounded) and raises HarnessError if it never does.
    """
    if _libvirt_answers():
        return
    for name in ("virtlogd", "libvirtd"):
        if shutil.which(name) is None:
            raise HarnessError(f"{name} is not installed (run scripts/setup.sh)")
        if not _running(name):
            subprocess.run([name, "-d"], check=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _libvirt_answers():
            return
        time.sleep(0.2)
    raise HarnessError(f"libvirtd does not answer on {URI} after {timeout:.0f} s")


@dataclass(frozen=True)
class Capabilities:
    """What the integration tests can use here; `missing(...)` names what is not."""

    libvirt_python: bool
    libnbd_python: bool
    libvirtd: bool
    qemu: bool
    nbdkit: bool
    nbdkit_python: bool
    nbdfuse: bool
    fuse: bool
    virtnbdbackup: bool
    mkfs_xfs: bool
    dev_nbd: bool
    guest_build: bool  # debootstrap + extlinux: tests/harness/build_guest.sh
    guestfs: bool  # python3-guestfs (libguestfs)
    swtpm: bool  # a vTPM (libvirt starts swtpm for <tpm><backend type='emulator'>)

    def missing(self, *names: str) -> list[str]:
        return [name for name in names if not getattr(self, name)]

    def summary(self) -> str:
        return ", ".join(
            f"{name}={'yes' if value else 'NO'}" for name, value in self.__dict__.items()
        )


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _nbdkit_python() -> bool:
    if shutil.which("nbdkit") is None:
        return False
    done = subprocess.run(
        ["nbdkit", "--dump-plugin", "python"], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


@functools.cache
def capabilities() -> Capabilities:
    """Probe once per process. libvirtd counts as found when it is installed (tests start it)."""
    return Capabilities(
        libvirt_python=_importable("libvirt"),
        libnbd_python=_importable("nbd"),
        libvirtd=shutil.which("libvirtd") is not None and shutil.which("virsh") is not None,
        qemu=shutil.which("qemu-system-x86_64") is not None
        and shutil.which("qemu-img") is not None,
        nbdkit=shutil.which("nbdkit") is not None,
        nbdkit_python=_nbdkit_python(),
        nbdfuse=shutil.which("nbdfuse") is not None,
        fuse=os.path.exists("/dev/fuse"),
        virtnbdbackup=shutil.which("virtnbdbackup") is not None,
        mkfs_xfs=shutil.which("mkfs.xfs") is not None,
        dev_nbd=bool(glob.glob("/dev/nbd[0-9]*")),
        guest_build=shutil.which("debootstrap") is not None
        and shutil.which("extlinux") is not None
        and os.path.exists("/usr/lib/syslinux/mbr/mbr.bin"),
        guestfs=_importable("guestfs"),
        swtpm=shutil.which("swtpm") is not None and shutil.which("swtpm_setup") is not None,
    )
