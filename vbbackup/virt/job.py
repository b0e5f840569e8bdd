"""The pull-mode libvirt backup job as a context manager that always ends the job.

While the job runs, QEMU serves every disk of the job read-only over NBD on a
unix socket, frozen at the moment the job began (writes of the guest go
through copy-before-write into a scratch file). The job only ends when the
client aborts it, so ``__exit__`` does that on every path, and SIGTERM is
turned into an exception for the duration so that ``kill`` ends it too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import libvirt
from lxml import etree

from vbbackup.errors import BackupBusyError, BackupInterrupted, LibvirtError, VbError
from vbbackup.virt.connection import error_text
from vbbackup.virt.xmltext import escape, quoteattr

SOCKET_PREFIX = "vbbackup-"
END_TIMEOUT = 30.0
_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class JobDisk:
    """How to read one disk of a running job over NBD."""

    target: str
    export: str
    bitmap: str | None  # NBD meta context of the dirty bitmap (incremental jobs)


def backup_xml(
    socket: Path,
    scratch: dict[str, Path],
    skip: Sequence[str],
    incremental: str | None,
    tcp: tuple[str, int] | None = None,
    tls: bool = False,
) -> str:
    disks = [
        f"<disk name={quoteattr(t)} backup='yes' type='file'>"
        f"<scratch file={quoteattr(str(p))}/></disk>"
        for t, p in scratch.items()
    ]
    disks += [f"<disk name={quoteattr(t)} backup='no'/>" for t in skip]
    inc = f"<incremental>{escape(incremental)}</incremental>" if incremental else ""
    tls_attr = " tls='yes'" if tls else ""
    server = (
        f"<server transport='tcp' name={quoteattr(tcp[0])} port='{tcp[1]}'{tls_attr}/>"
        if tcp  # remote hosts: the export is reached over TCP
        else f"<server transport='unix' socket={quoteattr(str(socket))}/>"
    )
    return f"<domainbackup mode='pull'>{inc}{server}<disks>{''.join(disks)}</disks></domainbackup>"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:40]


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise BackupInterrupted(f"stopped by {signal.Signals(signum).name}")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise BackupInterrupted inside the block (as Ctrl-C raises
    KeyboardInterrupt), so the caller's cleanup runs; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _on_signal) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _job_active(dom: libvirt.virDomain) -> bool:
    return bool(dom.isActive()) and dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE


class BackupJob:
    """``with BackupJob(...) as job: job.disks["vda"].export`` — begun on enter, ended on exit.

    targets: disks to export; skip: the domain's other disks. incremental: the
    checkpoint whose changes the job exports as dirty bitmaps. checkpoint_xml:
    a checkpoint the job creates atomically with its start.
    """

    def __init__(
        self,
        dom: libvirt.virDomain,
        targets: Sequence[str],
        skip: Sequence[str],
        scratch_dir: Path,
        *,
        incremental: str | None = None,
        checkpoint_xml: str | None = None,
        tcp: tuple[str, int] | None = None,
        tls: bool = False,
    ) -> None:
        self.dom = dom
        self.tcp = tcp
        self.tls = tls  # QEMU's certificates: qemu.conf's backup/default_tls_x509_cert_dir
        self.targets = list(targets)
        self.skip = list(skip)
        self.incremental = incremental
        self.checkpoint_xml = checkpoint_xml
        stem = f"{SOCKET_PREFIX}{_safe(dom.name())}-{os.getpid()}"
        self.socket = scratch_dir / f"{stem}.sock"
        self.scratch = {t: scratch_dir / f"{stem}.{_safe(t)}.scratch" for t in self.targets}
        self.disks: dict[str, JobDisk] = {}
        self._old_handlers: dict[int, Any] = {}
        self._running = False

    def __enter__(self) -> BackupJob:
        self._trap_signals()
        try:
            self._begin()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cleanup()

    def _trap_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, _on_signal)

    def _begin(self) -> None:
        name = self.dom.name()
        xml = backup_xml(self.socket, self.scratch, self.skip, self.incremental, self.tcp, self.tls)
        try:
            self.dom.backupBegin(xml, self.checkpoint_xml, 0)
        except libvirt.libvirtError as err:
            raise begin_error(name, err, self.socket) from None
        self._running = True
        self.disks = self._read_exports()

    def _read_exports(self) -> dict[str, JobDisk]:
        """Export and bitmap names as libvirt chose them (defaults: target, backup-<target>)."""
        try:
            root = etree.fromstring(self.dom.backupGetXMLDesc(0).encode())
        except libvirt.libvirtError as err:
            raise LibvirtError(f"cannot read the backup job: {error_text(err)}") from None
        disks = {}
        for node in root.iterfind("disks/disk"):
            target = node.get("name", "")
            if target not in self.targets:
                continue
            bitmap = node.get("exportbitmap")
            if bitmap is None and self.incremental:
                bitmap = f"backup-{target}"
            disks[target] = JobDisk(
                target=target,
                export=node.get("exportname") or target,
                bitmap=f"qemu:dirty-bitmap:{bitmap}" if bitmap else None,
            )
        return disks

    def _cleanup(self) -> None:
        try:
            if self._running:
                self._running = False
                end_job(self.dom)
        finally:
            with contextlib.suppress(OSError):
                self.socket.unlink()
            for path in self.scratch.values():
                with contextlib.suppress(OSError):
                    path.unlink()
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)
            self._old_handlers.clear()


def end_job(dom: libvirt.virDomain) -> None:
    """A pull job runs until its client aborts it: abortJob is the normal end."""
    try:
        if _job_active(dom):
            dom.abortJob()
        # abortJob returns while QEMU still cancels the job's block jobs: wait for the end,
        # so that the next run (or the user's next command) finds the domain idle.
        deadline = time.monotonic() + END_TIMEOUT
        while _job_active(dom) and time.monotonic() < deadline:
            time.sleep(0.02)
    except libvirt.libvirtError as err:
        with contextlib.suppress(libvirt.libvirtError):
            if not _job_active(dom):
                return
        raise LibvirtError(f"cannot end the backup job: {error_text(err)}") from None


def end_stale_job(dom: libvirt.virDomain) -> str | None:
    """End a backup job that a vbbackup run which died (SIGKILL) left running.

    Only a job serving on one of our sockets whose process is gone is ended;
    returns its socket path, or None when there was no such job.
    """
    try:
        if not _job_active(dom):
            return None
        root = etree.fromstring(dom.backupGetXMLDesc(0).encode())
    except libvirt.libvirtError:
        return None
    server = root.find("server")
    socket = server.get("socket", "") if server is not None else ""
    match = re.match(rf"{re.escape(SOCKET_PREFIX)}.*-(\d+)\.sock$", Path(socket).name)
    if match is None or _pid_alive(int(match.group(1))):
        return None
    end_job(dom)
    return socket


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def begin_error(domain: str, err: libvirt.libvirtError, socket: Path) -> VbError:
    """What went wrong starting the job, said so that the user knows the fix."""
    text = error_text(err)
    code = err.get_error_code()
    if "domain is not running" in text:
        return LibvirtError(
            f"domain {domain!r} is not running: vbbackup backs up running domains "
            f"(start it, paused is enough: virsh start --paused {domain})"
        )
    if "bind socket" in text or ("Permission denied" in text and str(socket.parent) in text):
        return LibvirtError(
            f"QEMU may not create the backup job's socket and scratch files in "
            f"{socket.parent} ({text}). With AppArmor, add the lines "
            f"'{socket.parent}/{SOCKET_PREFIX}*.sock rw,' and "
            f"'{socket.parent}/{SOCKET_PREFIX}*.scratch rwk,' to "
            "/etc/apparmor.d/local/abstractions/libvirt-qemu and reload the libvirt "
            "profiles; otherwise choose a --scratchdir that the QEMU user can write"
        )
    if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED) or (
        "backup" in text and "not supported" in text
    ):
        return LibvirtError(
            f"this libvirt/QEMU lacks the backup API ({text}): use libvirt >= 7.6 with "
            "QEMU >= 6.0; with libvirt 6.0-7.5 add <qemu:capabilities><qemu:add "
            "capability='incremental-backup'/></qemu:capabilities> to the domain XML "
            "(xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0')"
        )
    if "job" in text and ("already" in text or "another" in text or "active" in text):
        return BackupBusyError(f"domain {domain!r} already runs a job ({text}); try again later")
    return LibvirtError(f"cannot start the backup job of {domain!r}: {text}")
