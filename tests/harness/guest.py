"""A real Debian guest for the tests that need one (freeze, booting restores, files).

The image is built once per machine by ``build_guest.sh`` and cached under a key
of that script's content, so a change to the build builds again::

    /var/tmp/vbbackup-guest/<key>/root.qcow2    MBR + extlinux, ext4 root (LABEL=vbroot)
                                 /data.qcow2    ext4 on the whole disk, /data (LABEL=vbdata)

A `Guest` is a throwaway domain on copies of those images (``vbtest-<pid>-...``
like the harness' paused VMs, so the same sweep removes leftovers), run as
``type='qemu'``: KVM does not boot real guests on this nested machine, and under
TCG this guest answers its agent about 40 s after the start. It is driven only
through the guest agent (`sh`, `write_file`). Its serial console goes to
``console.log`` in the guest's directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt

from tests.harness.libvirtd import HarnessError
from tests.harness.vm import VM_PREFIX, VM_ROOT, _give_to_qemu, remove_domain, remove_files
from vbbackup.errors import LibvirtError
from vbbackup.virt.agent import ExecResult, agent_answers, guest_exec

BUILD_SCRIPT = Path(__file__).with_name("build_guest.sh")
CACHE_ROOT = Path("/var/tmp/vbbackup-guest")
BOOT_TIMEOUT = 240.0  # TCG on a busy 2-core machine: usually about 40 s


@dataclass(frozen=True)
class GuestImage:
    root: Path  # qcow2, vda
    data: Path  # qcow2, vdb


def guest_image() -> GuestImage:
    """The cached images, built first when the build script changed (under a lock)."""
    key = hashlib.sha256(BUILD_SCRIPT.read_bytes()).hexdigest()[:16]
    cache = CACHE_ROOT / key
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    CACHE_ROOT.chmod(0o755)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cache / "done").exists():
            _build(cache)
    return GuestImage(cache / "root.qcow2", cache / "data.qcow2")


def _build(cache: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=CACHE_ROOT))
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT), str(work)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise HarnessError(f"building the test guest failed: {done.stderr.strip()[-2000:]}")
        for disk in ("root", "data"):
            subprocess.run(
                ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
                 str(work / f"{disk}.raw"), str(work / f"{disk}.qcow2")],
                check=True,
            )  # fmt: skip
            (work / f"{disk}.raw").unlink()
        (work / "done").write_text("built\n")
        shutil.rmtree(cache, ignore_errors=True)
        work.rename(cache)
        cache.chmod(0o755)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in CACHE_ROOT.iterdir():  # older builds
        if old.is_dir() and old.name != cache.name:
            shutil.rmtree(old, ignore_errors=True)


def domain_xml(name: str, root: Path, data: Path, console: Path, memory_mib: int = 512) -> str:
    """The guest's definition: two virtio disks, agent channel, serial console to a file."""
    disks = "".join(
        f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='{path}'/>
      <target dev='{dev}' bus='virtio'/>
      <alias name='ua-{dev}'/>
    </disk>"""
        for dev, path in (("vda", root), ("vdb", data))
    )
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_crash>destroy</on_crash>
  <devices>{disks}
    <serial type='pty'>
      <log file='{console}' append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def wait_for_agent(dom: libvirt.virDomain, timeout: float = BOOT_TIMEOUT) -> float:
    """Seconds until the guest agent of a starting domain answers; HarnessError after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if not dom.isActive():
            raise HarnessError(f"{dom.name()} stopped while booting")
        if agent_answers(dom):
            return time.monotonic() - started
        time.sleep(1.0)
    raise HarnessError(f"the guest agent of {dom.name()} did not answer within {timeout:.0f} s")


def wait_booted(dom: libvirt.virDomain, timeout: float = BOOT_TIMEOUT) -> None:
    """Until the agent answers and systemd has finished booting (/data mounted): the agent
    starts before the last mounts."""
    wait_for_agent(dom, timeout)
    run_in(dom, "systemctl is-system-running --wait >/dev/null || true", timeout)


def run_in(dom: libvirt.virDomain, script: str, timeout: float = 120.0) -> str:
    """A shell script in the guest; its stdout, or HarnessError with its stderr."""
    try:
        result = guest_exec(dom, ["/bin/sh", "-c", script], timeout=timeout)
    except LibvirtError as err:
        raise HarnessError(str(err)) from None
    if result.exitcode != 0:
        raise HarnessError(
            f"in {dom.name()}: {script!r} exited {result.exitcode}: "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return result.stdout.decode(errors="replace")


class Guest:
    """A running real guest on its own copies of the cached images; `close()` removes it."""

    __test__ = False

    def __init__(self, conn: libvirt.virConnect, image: GuestImage) -> None:
        self.conn = conn
        self.dir = Path(tempfile.mkdtemp(prefix=f"{VM_PREFIX}{os.getpid()}-", dir=VM_ROOT))
        _give_to_qemu(self.dir)
        self.name = self.dir.name
        self.console = self.dir / "console.log"
        self.disks = {"vda": self.dir / "vda.qcow2", "vdb": self.dir / "vdb.qcow2"}
        self.dom: libvirt.virDomain | None = None
        try:
            for target, source in (("vda", image.root), ("vdb", image.data)):
                subprocess.run(
                    ["cp", "--sparse=always", "--reflink=auto", str(source),
                     str(self.disks[target])],
                    check=True,
                )  # fmt: skip
                self.disks[target].chmod(0o644)
            xml = domain_xml(self.name, self.disks["vda"], self.disks["vdb"], self.console)
            self.dom = conn.defineXML(xml)
            self.dom.create()
            wait_booted(self.dom)
        except BaseException:
            self.close()
            raise

    @property
    def domain(self) -> libvirt.virDomain:
        if self.dom is None:
            raise HarnessError(f"{self.name} is closed")
        return self.dom

    def sh(self, script: str, timeout: float = 120.0) -> str:
        return run_in(self.domain, script, timeout)

    def exec(self, argv: list[str], timeout: float = 120.0) -> ExecResult:
        return guest_exec(self.domain, argv, timeout=timeout)

    def close(self) -> None:
        dom = self.dom
        if dom is None:
            with contextlib.suppress(libvirt.libvirtError):
                dom = self.conn.lookupByName(self.name)
        if dom is not None:
            remove_domain(dom)
        self.dom = None
        remove_files(self.name)

    def __repr__(self) -> str:
        return f"Guest({self.name})"
