"""Throwaway libvirt domains whose live disks the tests write, mirrored into expected images.

Every VM gets its own directory straight under /var/tmp, named like the domain
(``vbtest-<pid>-<random>``), mode 0755 so that QEMU (user libvirt-qemu) can reach
its disks, data files, the backup job's NBD socket and scratch files there (QEMU
creates the socket itself, so the directory belongs to libvirt-qemu)::

    /var/tmp/vbtest-1234-k2j9x1/
        vda.qcow2              live disk (qcow2 v3 unless asked otherwise)
        vda.mirror.raw         sparse raw image: every byte written so far
        vda.expected.3.raw     snapshot returned by vm.expected("vda")
        io-7.bin               data file of one write, removed after it

The domain is ``type='qemu'`` (TCG, so nothing depends on a usable /dev/kvm in
this nested machine), has 64 MiB of memory and no OS, and is started paused. Each disk
carries the user alias ``ua-<target>``, so its block backend is
``/machine/peripheral/ua-<target>/virtio-backend``.

Writes go into the live disk through HMP ``qemu-io``. That command prints its
result on QEMU's stdout, which libvirt sends to the domain log
(/var/log/libvirt/qemu/<name>.log), not to the monitor reply: `qemu_io()` watches
the log for the ``wrote N/N bytes at offset O`` line and raises on anything else.
qemu-io needs no alignment: the block layer does read-modify-write, so any
offset and length inside the disk work (checked with offsets like 3 and
lengths like 5000 on qcow2 and raw disks).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu

from tests.harness.libvirtd import HarnessError

MiB = 1024 * 1024
VM_PREFIX = "vbtest-"
VM_ROOT = Path("/var/tmp")
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
QEMU_USER = "libvirt-qemu"
_CHUNK = 4 * MiB
_QEMU_IO_TIMEOUT = 30.0

_live: set[TestVM] = set()


@dataclass(frozen=True)
class DiskSpec:
    """One disk of a test VM.

    size: virtual size in bytes; None takes the size of `image`.
    fmt: "qcow2" (v3 unless the VM's qcow2_compat says "0.10") or "raw".
    image: a raw image to start from (converted to `fmt`, copied into the mirror).
    """

    target: str = "vda"
    size: int | None = 32 * MiB
    fmt: str = "qcow2"
    image: Path | None = None


@dataclass
class _Disk:
    spec: DiskSpec
    path: Path
    mirror: Path
    size: int


def _log_since(log: Path, start: int) -> str:
    """Text appended to a domain log after byte `start`, across a rotation by virtlogd."""
    with open(log, errors="replace") as f:
        if os.fstat(f.fileno()).st_size >= start:
            f.seek(start)
            return f.read()
        text = f.read()
    rotated = log.with_name(log.name + ".0")
    with contextlib.suppress(FileNotFoundError), open(rotated, errors="replace") as f:
        f.seek(start)
        text = f.read() + text
    return text


def _give_to_qemu(path: Path) -> None:
    """Mode 0755 and owner libvirt-qemu: QEMU creates the backup job's NBD socket here."""
    path.chmod(0o755)
    try:
        user = pwd.getpwnam(QEMU_USER)
    except KeyError:
        path.chmod(0o777)
        return
    os.chown(path, user.pw_uid, user.pw_gid)


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range of the mirror (reads back as zeroes), or write zeroes."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    falloc_fl_keep_size, falloc_fl_punch_hole = 0x01, 0x02
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    if libc.fallocate(fd, falloc_fl_keep_size | falloc_fl_punch_hole, offset, length) == 0:
        return
    zeroes = bytes(min(length, _CHUNK))
    done = 0
    while done < length:
        n = min(len(zeroes), length - done)
        os.pwrite(fd, zeroes[:n], offset + done)
        done += n


def _run(*args: str | Path) -> None:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(map(str, args))} failed: {done.stderr.strip()}")


def _copy_sparse(src: Path, dst: Path) -> None:
    _run("cp", "--sparse=always", "--reflink=auto", src, dst)


class TestVM:
    """A paused throwaway domain; see the module docstring. Use `close()` (or the fixture)."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        conn: libvirt.virConnect,
        disks: Iterable[DiskSpec] = (DiskSpec(),),
        *,
        cdrom: bool = False,
        qcow2_compat: str = "1.1",
        memory_mib: int = 64,
    ) -> None:
        self.conn = conn
        self.dir = Path(tempfile.mkdtemp(prefix=f"{VM_PREFIX}{os.getpid()}-", dir=VM_ROOT))
        _give_to_qemu(self.dir)
        self.name = self.dir.name
        self.dom: libvirt.virDomain | None = None
        self._disks: dict[str, _Disk] = {}
        self._counter = itertools.count()
        _live.add(self)
        try:
            for spec in disks:
                self._disks[spec.target] = self._make_disk(spec, qcow2_compat)
            xml = self._domain_xml(cdrom, memory_mib)
            self.dom = conn.defineXML(xml)
            self.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        except BaseException:
            self.close()
            raise

    # -- creation -----------------------------------------------------------------------

    def _make_disk(self, spec: DiskSpec, qcow2_compat: str) -> _Disk:
        if spec.target in self._disks:
            raise HarnessError(f"disk target {spec.target} given twice")
        if spec.fmt not in ("qcow2", "raw"):
            raise HarnessError(f"disk format {spec.fmt!r}: only qcow2 and raw")
        path = self.dir / f"{spec.target}.{spec.fmt}"
        mirror = self.dir / f"{spec.target}.mirror.raw"
        if spec.image is not None:
            size = spec.size if spec.size is not None else spec.image.stat().st_size
            _copy_sparse(spec.image, mirror)
            if mirror.stat().st_size > size:
                raise HarnessError(f"image {spec.image} is larger than the disk size {size}")
            os.truncate(mirror, size)
            if spec.fmt == "qcow2":
                _run(
                    "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
                    "-o", f"compat={qcow2_compat}", mirror, path,
                )  # fmt: skip
            else:
                _copy_sparse(mirror, path)
        else:
            if spec.size is None:
                raise HarnessError(f"disk {spec.target}: give a size or an image")
            size = spec.size
            if spec.fmt == "qcow2":
                _run(
                    "qemu-img", "create", "-q", "-f", "qcow2",
                    "-o", f"compat={qcow2_compat}", path, str(size),
                )  # fmt: skip
            else:
                with open(path, "wb") as f:
                    f.truncate(size)
            with open(mirror, "wb") as f:
                f.truncate(size)
        path.chmod(0o644)
        return _Disk(spec=spec, path=path, mirror=mirror, size=size)

    def _domain_xml(self, cdrom: bool, memory_mib: int) -> str:
        disks = "".join(
            f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='{d.spec.fmt}' discard='unmap'/>
      <source file='{d.path}'/>
      <target dev='{d.spec.target}' bus='virtio'/>
      <alias name='ua-{d.spec.target}'/>
    </disk>"""
            for d in self._disks.values()
        )
        if cdrom:
            disks += """
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
      <alias name='ua-cdrom'/>
    </disk>"""
        return f"""<domain type='qemu'>
  <name>{self.name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_crash>destroy</on_crash>
  <devices>{disks}
    <memballoon model='none'/>
  </devices>
</domain>
"""

    # -- inspection ---------------------------------------------------------------------

    @property
    def targets(self) -> list[str]:
        return list(self._disks)

    def disk_path(self, target: str) -> Path:
        return self._disk(target).path

    def disk_size(self, target: str) -> int:
        return self._disk(target).size

    def disk_format(self, target: str) -> str:
        return self._disk(target).spec.fmt

    def expected(self, target: str) -> Path:
        """A snapshot of the expected raw image of `target` now; later writes leave it alone."""
        disk = self._disk(target)
        snapshot = self.dir / f"{target}.expected.{next(self._counter)}.raw"
        _copy_sparse(disk.mirror, snapshot)
        return snapshot

    def _disk(self, target: str) -> _Disk:
        try:
            return self._disks[target]
        except KeyError:
            raise HarnessError(f"{self.name} has no disk {target}") from None

    # -- live writes --------------------------------------------------------------------

    def write(self, target: str, offset: int, data: bytes) -> None:
        """Write `data` at `offset` into the live disk and the mirror."""
        disk = self._check_range(target, offset, len(data))
        data_file = self.dir / f"io-{next(self._counter)}.bin"
        data_file.write_bytes(data)
        data_file.chmod(0o644)
        try:
            self.qemu_io(target, f"write -s {data_file} {offset} {len(data)}")
        finally:
            data_file.unlink()
        with open(disk.mirror, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def write_pattern(self, target: str, offset: int, length: int, byte: int) -> None:
        """Fill [offset, offset+length) with one byte value."""
        disk = self._check_range(target, offset, length)
        if not 0 <= byte <= 255:
            raise HarnessError(f"pattern byte {byte} is not in 0..255")
        self.qemu_io(target, f"write -P {byte:#04x} {offset} {length}")
        piece = bytes([byte]) * min(length, _CHUNK)
        with open(disk.mirror, "r+b") as f:
            f.seek(offset)
            done = 0
            while done < length:
                done += f.write(piece[: length - done])

    def discard(self, target: str, offset: int, length: int) -> None:
        """Zero and unmap [offset, offset+length) (qemu-io ``write -z -u``): reads as zeroes."""
        disk = self._check_range(target, offset, length)
        self.qemu_io(target, f"write -z -u {offset} {length}")
        fd = os.open(disk.mirror, os.O_RDWR)
        try:
            _punch_hole(fd, offset, length)
        finally:
            os.close(fd)

    def _check_range(self, target: str, offset: int, length: int) -> _Disk:
        disk = self._disk(target)
        if length <= 0 or offset < 0 or offset + length > disk.size:
            raise HarnessError(
                f"{target}: range {offset}+{length} is outside the disk of {disk.size} bytes"
            )
        return disk

    def hmp(self, command: str) -> str:
        """One HMP command on the live domain; returns the monitor's reply."""
        if self.dom is None:
            raise HarnessError(f"{self.name} is not running")
        return libvirt_qemu.qemuMonitorCommand(
            self.dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
        )

    def qemu_io(self, target: str, command: str) -> None:
        """Run one qemu-io write command on the disk's backend (see ``qemu_io``)."""
        if self.dom is None:
            raise HarnessError(f"{self.name} is not running")
        qemu_io(self.dom, target, command)

    # -- cleanup ------------------------------------------------------------------------

    def close(self) -> None:
        """Abort any job, destroy, undefine (with checkpoint/snapshot metadata), remove files."""
        _live.discard(self)
        dom = self.dom
        if dom is None:
            try:
                dom = self.conn.lookupByName(self.name)
            except libvirt.libvirtError:
                dom = None
        if dom is not None:
            remove_domain(dom)
        self.dom = None
        remove_files(self.name)

    def __enter__(self) -> TestVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TestVM({self.name}, disks={self.targets})"


def qemu_io(dom: libvirt.virDomain, target: str, command: str) -> None:
    """Run one qemu-io write command on a running domain's disk (alias ua-<target>) and
    wait for its result.

    The result appears in the domain log (see the module docstring); anything but
    ``wrote L/L bytes at offset O`` raises HarnessError with the log text.
    """
    name = dom.name()
    match = re.match(r"write .*?(\d+) (\d+)$", command)
    if match is None:
        raise HarnessError(f"qemu_io handles write commands ending in OFFSET LENGTH: {command}")
    offset, length = match.groups()
    wanted = f"wrote {length}/{length} bytes at offset {offset}\n"
    log = QEMU_LOG_DIR / f"{name}.log"
    start = log.stat().st_size
    reply = libvirt_qemu.qemuMonitorCommand(
        dom,
        f'qemu-io -d /machine/peripheral/ua-{target}/virtio-backend "{command}"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
    )
    if reply.strip():
        raise HarnessError(f"qemu-io {command!r} on {name}/{target}: {reply.strip()}")
    deadline = time.monotonic() + _QEMU_IO_TIMEOUT
    while True:
        text = _log_since(log, start)
        if wanted in text:
            return
        if re.search(r"fail|error|invalid|usage|not found", text, re.IGNORECASE):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    raise HarnessError(f"qemu-io {command!r} on {name}/{target}: {text.strip()!r}")


def remove_domain(dom: libvirt.virDomain) -> None:
    """Tear down a domain whatever state it is in; errors on the way are not fatal."""
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive() and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
            dom.abortJob()
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    )
    with contextlib.suppress(libvirt.libvirtError):
        dom.undefineFlags(flags)


def remove_files(name: str) -> None:
    shutil.rmtree(VM_ROOT / name, ignore_errors=True)
    for log in QEMU_LOG_DIR.glob(f"{name}.log*"):
        log.unlink(missing_ok=True)


def _owner_alive(name: str) -> bool:
    """Whether the test process that made `name` (vbtest-<pid>-...) still runs."""
    try:
        pid = int(name[len(VM_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(conn: libvirt.virConnect) -> list[str]:
    """Remove vbtest-* domains and directories left by test runs that died.

    Runs of other developers on the same machine keep theirs: only names whose owner
    pid is gone are removed. Returns the names removed.
    """
    removed = []
    for dom in conn.listAllDomains():
        name = dom.name()
        if name.startswith(VM_PREFIX) and not _owner_alive(name):
            remove_domain(dom)
            removed.append(name)
    for path in VM_ROOT.glob(f"{VM_PREFIX}*"):
        if path.is_dir() and not _owner_alive(path.name):
            remove_files(path.name)
            if path.name not in removed:
                removed.append(path.name)
    for log in QEMU_LOG_DIR.glob(f"{VM_PREFIX}*.log*"):
        if not _owner_alive(log.name):
            log.unlink(missing_ok=True)
    return removed


@atexit.register
def _close_all() -> None:
    for vm in list(_live):
        vm.close()
