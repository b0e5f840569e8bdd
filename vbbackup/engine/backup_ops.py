"""The admin options of a backup run, as small steps ``run_backup`` calls.

    with domain_ready(dom, ops, say):            # --start-domain: start paused, destroy after
        clear_jobs(dom, ops, say)                # a job still running: --kill-jobs aborts it
        broken = broken_bitmaps(dom, parent, t)  # before reading: fall back or fail
        changes = estimate_changes(dom, parent, t)  # --estimate: the run's result
        if below_threshold(changes, ops, say):   # --threshold
            return
        with freeze(dom, ops, say):              # guest agent, around the checkpoint
            job = BackupJob(...)
        save_boot_files(domain_xml, out, ident)  # kernel, initrd, loader, nvram

Each step reads only ``BackupOptions``; none knows about click.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from vbbackup.errors import BackupBusyError, ChainError, LibvirtError, UsageError
from vbbackup.virt.agent import GuestFreeze
from vbbackup.virt.connection import error_text
from vbbackup.virt.estimate import checkpoint_sizes
from vbbackup.virt.job import end_job
from vbbackup.virt.offline import started_paused
from vbbackup.virt.redefine import drop_orphan_bitmaps
from vbbackup.virt.remote import is_remote

Say = Callable[[str], None]


@dataclass(frozen=True)
class BackupOptions:
    start_domain: bool = False
    freeze: bool = True
    freeze_mountpoints: tuple[str, ...] = ()
    estimate: bool = False
    threshold: int | None = None
    checkpoint_dir: Path | None = None  # default: DIR/checkpoints
    fallback: bool = True
    kill_jobs: bool = False
    nbd_host: str | None = None  # remote domains: the export is reached over TCP here
    nbd_port: int = 10809
    tls: bool = False  # the TCP export with TLS (QEMU's and our x509 certificates)
    tls_cert_dir: Path = Path("/etc/pki/qemu")
    pause: bool = False  # suspend the domain while the job starts (guests without an agent)


def nbd_tcp(uri: str, ops: BackupOptions) -> tuple[str, int] | None:
    """Where the job's export listens: None (a local unix socket) or (host, port)."""
    if ops.tls and not ops.nbd_host:
        raise UsageError("--tls protects the TCP export: give --nbd-host (and --nbd-port)")
    if ops.nbd_host:
        return ops.nbd_host, ops.nbd_port
    if is_remote(uri):
        raise UsageError(
            f"{uri} is a remote host: its disks are exported over TCP; give --nbd-host "
            "(the host's address as this machine reaches it) and --nbd-port"
        )
    return None


@contextlib.contextmanager
def domain_ready(
    dom: libvirt.virDomain, ops: BackupOptions, say: Say, copy: bool = False
) -> Iterator[None]:
    """A running domain as it is; a shut-off one started paused (--start-domain).

    A ``copy`` creates no checkpoint and changes nothing in the images, so it
    starts a shut-off domain paused without being asked.
    """
    if dom.isActive():
        yield
        return
    if not (ops.start_domain or copy):
        raise LibvirtError(
            f"domain {dom.name()!r} is not running: start it (paused is enough: "
            f"virsh start --paused {dom.name()}), or give --start-domain"
        )
    with started_paused(dom):
        say(f"started {dom.name()} paused for the backup; it is shut off again afterwards")
        yield


def clear_jobs(dom: libvirt.virDomain, ops: BackupOptions, say: Say) -> None:
    """A job still running (another tool's, or a killed run's): abort it only if asked."""
    if not dom.isActive() or dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
        return
    if not ops.kill_jobs:
        raise BackupBusyError(
            f"a block job is running on {dom.name()} (another backup, or one left by a killed "
            "run): wait for it, or abort it with --kill-jobs"
        )
    end_job(dom)
    say(f"aborted the job that was running on {dom.name()} (--kill-jobs)")


def broken_bitmaps(dom: libvirt.virDomain, checkpoint: str, targets: list[str]) -> list[str]:
    """Disks whose bitmap of ``checkpoint`` QEMU lacks: an inc cannot be read from them."""
    sizes = checkpoint_sizes(dom, checkpoint)
    return [t for t in targets if t in sizes and sizes[t] is None]


def fallback_dir(directory: Path) -> Path:
    """The next chain directory beside ``directory``: ``DIR.1``, ``DIR.2``, ..."""
    n = 1
    while directory.with_name(f"{directory.name}.{n}").exists():
        n += 1
    return directory.with_name(f"{directory.name}.{n}")


def refuse_or_fall_back(directory: Path, problem: str, ops: BackupOptions, warn: Say) -> Path:
    """--no-fallback: fail with the problem; else warn and name the new chain's directory."""
    if not ops.fallback:
        raise ChainError(f"{problem}; start a new chain with `vbbackup full` (--no-fallback)")
    target = fallback_dir(directory)
    warn(f"{problem}; falling back to a full backup into a new chain: {target}")
    return target


@dataclass(frozen=True)
class Estimate:
    """Bytes changed per disk since a checkpoint (libvirt's bitmap sizes): --estimate's result."""

    since: str
    disks: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.disks.values())

    def line(self) -> str:
        per_disk = ", ".join(f"{t} {n}" for t, n in self.disks.items())
        return f"estimate: {self.total} bytes changed since {self.since} ({per_disk})"


def estimate_changes(dom: libvirt.virDomain, checkpoint: str, targets: list[str]) -> Estimate:
    """What an inc/diff from ``checkpoint`` would read, disk by disk."""
    sizes = checkpoint_sizes(dom, checkpoint)
    return Estimate(checkpoint, {t: sizes.get(t) or 0 for t in targets})


def below_threshold(changes: Estimate, ops: BackupOptions, say: Say) -> bool:
    """--threshold: skip the run (and say so) when fewer bytes changed."""
    if ops.threshold is None or changes.total >= ops.threshold:
        return False
    say(
        f"skipped: {changes.total} bytes changed since {changes.since}, "
        f"less than the threshold of {ops.threshold}"
    )
    return True


class NoFreeze(contextlib.nullcontext[None]):
    """--no-freeze: nothing frozen, and the set says so."""

    def consistency(self) -> dict[str, object]:
        return {"frozen": False, "reason": "--no-freeze"}


def freeze(dom: libvirt.virDomain, ops: BackupOptions, warn: Say) -> GuestFreeze | NoFreeze:
    """Guest filesystems frozen around the checkpoint, unless --no-freeze."""
    if not ops.freeze:
        return NoFreeze()
    return GuestFreeze(dom, ops.freeze_mountpoints, warn)


@contextlib.contextmanager
def paused(dom: libvirt.virDomain, enabled: bool, say: Say) -> Iterator[bool]:
    """--pause: a running domain suspended inside the block (the job's start), resumed on
    every way out; yields whether it was suspended."""
    if not enabled or dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
        yield False
        return
    try:
        dom.suspend()
    except libvirt.libvirtError as err:
        raise LibvirtError(f"--pause: cannot suspend {dom.name()}: {error_text(err)}") from None
    say(f"{dom.name()} paused while the backup job starts (--pause)")
    try:
        yield True
    finally:
        try:
            dom.resume()
        except libvirt.libvirtError as err:
            raise LibvirtError(
                f"could not resume {dom.name()} after --pause: {error_text(err)}; "
                f"run: virsh resume {dom.name()}"
            ) from None


class BrokenChainError(ChainError):
    """The chain cannot go on (checkpoint lost for good, bitmap missing): fall back."""


def tls_dir(ops: BackupOptions) -> str | None:
    """The client certificate directory libnbd reads, when --tls."""
    if not ops.tls:
        return None
    missing = [
        name
        for name in ("ca-cert.pem", "client-cert.pem", "client-key.pem")
        if not (ops.tls_cert_dir / name).is_file()
    ]
    if missing:
        raise UsageError(
            f"--tls: {ops.tls_cert_dir} lacks {', '.join(missing)} "
            "(the CA and a client certificate QEMU accepts; see --tls-cert-dir)"
        )
    return str(ops.tls_cert_dir)


def check_options(level: str, ops: BackupOptions, auto: bool = False) -> None:
    """--estimate and --threshold measure changes since a checkpoint: inc and diff only.

    With ``auto`` a run that turns out to start a chain ignores --threshold (the
    full has to happen; later runs are skipped while little changes).
    """
    if auto and not ops.estimate:
        return
    if (ops.estimate or ops.threshold is not None) and level not in ("inc", "diff"):
        raise UsageError(
            f"--estimate and --threshold apply to inc and diff backups; this run is a {level}"
        )


def check_bitmaps(dom: libvirt.virDomain, checkpoint: str, targets: list[str]) -> None:
    """Before any job: every disk must still have the bitmap of the chain's last checkpoint."""
    broken = broken_bitmaps(dom, checkpoint, targets)
    if broken:
        raise BrokenChainError(
            f"the bitmap of checkpoint {checkpoint} is missing or broken in QEMU for disk "
            f"{', '.join(broken)} of {dom.name()}: no incremental backup can be read from it"
        )


def drop_orphans(
    dom: libvirt.virDomain, name: str, targets: list[str], all_targets: list[str], say: Say
) -> None:
    """Before a checkpoint is created: clear same-named bitmaps a lost checkpoint left."""
    for target in drop_orphan_bitmaps(dom, name, targets, all_targets):
        say(f"{target}: removed bitmap {name} that no checkpoint owned (a lost checkpoint's)")
