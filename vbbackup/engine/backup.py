"""``vbbackup full|inc|diff|copy|auto``: one run of the backup engine.

Order of a run, so that a crash at any point leaves a restorable set:
lock the domain -> inspect disks -> plan checkpoints -> begin the pull job
(creates the new checkpoint) -> side files -> one stream per disk, each to
``*.partial`` and renamed when complete -> ``DOMAIN.cpt`` last -> end the job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import libvirt

from vbbackup.chain import BackupSet, PointInTimeView
from vbbackup.chain.backupset import PendingRun
from vbbackup.engine.backup_ops import (
    BackupOptions,
    BrokenChainError,
    Estimate,
    Say,
    below_threshold,
    check_bitmaps,
    check_options,
    clear_jobs,
    domain_ready,
    drop_orphans,
    estimate_changes,
    freeze,
    nbd_tcp,
    refuse_or_fall_back,
    tls_dir,
)
from vbbackup.engine.backupset import COPY, DIFF, FULL, INC, BackupDir
from vbbackup.engine.diskstream import copy_extents
from vbbackup.engine.lock import directory_lock, domain_lock
from vbbackup.engine.writeback import WritebackFile
from vbbackup.errors import (
    ChainError,
    LibvirtError,
    StreamFormatError,
    TargetExistsError,
    UsageError,
    VbError,
)
from vbbackup.format import StreamMeta, StreamWriter, read_index
from vbbackup.fsutil import atomic_output, write_stream_checks
from vbbackup.nbdio import Extent, NbdReader, changed_extents, data_size
from vbbackup.virt import (
    BackupJob,
    Checkpoints,
    DomainDisk,
    JobDisk,
    checkpoint_index,
    domain_disks,
    image_info,
    libvirt_connection,
    lookup_domain,
)
from vbbackup.virt.agent import consistency_line
from vbbackup.virt.bootfiles import save_boot_files
from vbbackup.virt.checkpoints import (
    chain_of,
    checkpoint_name,
    checkpoint_xml,
    following,
    identity_mismatch,
    new_chain_id,
)
from vbbackup.virt.imageinfo import qcow2_compat
from vbbackup.virt.job import end_stale_job
from vbbackup.virt.remote import ssh_prefix

AUTO = "auto"
LEVELS = (FULL, INC, DIFF, COPY, AUTO)
MiB = 1024 * 1024
log = logging.getLogger("vbbackup.backup")


@dataclass(frozen=True)
class BackupConfig:
    """Everything one run needs; built by the CLI, never a click context."""

    domain: str
    level: str
    output: Path
    uri: str = "qemu:///system"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    compress: int | None = None  # lz4 level, None: uncompressed
    workers: int | None = None  # disks in parallel, None: one per disk
    scratch_dir: Path = Path("/var/tmp")
    sparse_detection: bool = True
    raw: bool = False
    request_size: int = 4 * MiB
    in_flight: int = 4
    ops: BackupOptions = BackupOptions()  # admin options (see backup_ops)


@dataclass
class DiskResult:
    target: str
    level: str
    path: str
    data_bytes: int
    zero_bytes: int
    file_bytes: int
    seconds: float

    @property
    def throughput(self) -> float:
        """Data bytes per second."""
        return self.data_bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class BackupResult:
    domain: str
    level: str
    directory: str
    checkpoint: str | None
    disks: list[DiskResult] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    estimate: Estimate | None = None  # --estimate: the run's result instead of streams
    consistency: dict[str, Any] | None = None  # frozen by the guest agent (where), or why not

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        if self.estimate is not None:
            result["estimate"]["bytes"] = self.estimate.total
        return result


class Reporter:
    """What a run tells its user; the CLI overrides these (thread-safe there)."""

    def info(self, message: str) -> None:
        log.info(message)

    def disk_started(self, target: str, total: int) -> None:
        pass

    def disk_progress(self, target: str, done: int) -> None:
        pass

    def disk_done(self, result: DiskResult) -> None:
        pass


@dataclass(frozen=True)
class _DiskPlan:
    disk: DomainDisk
    level: str  # FULL, INC, DIFF or COPY (raw disks in a full run: COPY)
    path: Path
    incremental: bool
    checkpoint: str
    parent: str | None


def run_backup(config: BackupConfig, reporter: Reporter | None = None) -> BackupResult:
    """Back up one domain into ``config.output``; see the module docstring.

    A chain that cannot go on falls back to a full into the next chain directory
    (``DIR.1``...) with a warning, or fails with ``--no-fallback`` (see backup_ops).
    """
    reporter = reporter or Reporter()
    try:
        return _Run(config, reporter).run()
    except BrokenChainError as err:
        target = refuse_or_fall_back(config.output, str(err), config.ops, reporter.info)
        ops = replace(config.ops, checkpoint_dir=None)  # the old chain's XML stays untouched
        return _Run(replace(config, level=FULL, output=target, ops=ops), reporter).run()


class _Run:
    """One run, step by step in the order of the module docstring.

    The steps share the libvirt domain, the output directory and what the
    earlier steps found (level, disks, chain); ``run`` reads as the outline.
    """

    # found by the steps, in this order
    dom: libvirt.virDomain  # _connect
    ssh: list[str]
    tcp: tuple[str, int] | None
    level: str  # _open_output
    domain_xml: str  # _inspect_domain
    all_disks: list[DomainDisk]
    chosen: list[DomainDisk]
    skipped: dict[str, str]
    infos: dict[str, dict[str, Any]]
    cps: Checkpoints
    chain: list[str]
    bitmap_disks: list[str]
    consistency: dict[str, Any]  # _begin_job

    def __init__(self, config: BackupConfig, reporter: Reporter) -> None:
        if config.level not in LEVELS:
            raise UsageError(f"unknown backup level {config.level!r} (one of {', '.join(LEVELS)})")
        self.config = config
        self.ops = config.ops
        self.reporter = reporter
        self.say = reporter.info
        self.started = time.monotonic()
        self.out = BackupDir(config.output, config.domain, config.ops.checkpoint_dir)

    def run(self) -> BackupResult:
        with ExitStack() as stack:
            self._connect(stack)
            self._open_output(stack)
            self._inspect_domain(stack)
            if self.level in (INC, DIFF):
                measured = self._measure_changes()
                if measured is not None:
                    return measured
            parent, new_cp, meta_cp = _plan_checkpoints(
                self.level, self.out, self.cps, self.chain, self.chosen, self.reporter
            )
            self._check_chain(parent, new_cp)
            ident = {FULL: new_cp, INC: new_cp, DIFF: str(int(time.time())), COPY: COPY}[self.level]
            plans = [_plan_disk(d, self.level, self.out, ident or "", meta_cp, parent)
                     for d in self.chosen]  # fmt: skip
            self._clear_leftovers(plans)
            job = self._begin_job(stack, plans, parent, new_cp)
            self._save_side_files(ident or COPY, new_cp)
            results = _backup_disks(job, plans, self.config, self.reporter)
            if new_cp:  # the commit (it removes the commit record)
                self.out.write_checkpoints([*(self.chain if self.level == INC else []), new_cp])
            else:
                self.out.clear_pending()
            result = self._result(new_cp, results)
            log.info("done in %.1f s", result.seconds)
            return result

    def _connect(self, stack: ExitStack) -> None:
        """libvirt, the domain, remote-host settings, and the domain's lock."""
        config = self.config
        conn = stack.enter_context(libvirt_connection(config.uri))
        self.dom = lookup_domain(conn, config.domain)
        self.ssh, self.tcp = ssh_prefix(config.uri), nbd_tcp(config.uri, self.ops)  # remote
        tls_dir(self.ops)  # --tls: the client certificates are there before anything starts
        stack.enter_context(domain_lock(config.domain, self.dom.UUIDString()))
        stack.enter_context(directory_lock(config.output, "backing up into it"))

    def _open_output(self, stack: ExitStack) -> None:
        """The level ``auto`` resolves to, the chain it extends, then the directory and the
        run's own log: a run refused for its options or its chain leaves nothing behind."""
        self.level = _resolve_level(self.config.level, self.out)
        check_options(self.level, self.ops, auto=self.config.level == AUTO)
        if self.level in (INC, DIFF):
            _require_chain(self.out, self.out.checkpoints())
            _require_whole_chain(self.out, self.out.checkpoints())
        if not self.ops.estimate:
            self.out.create()
            stack.enter_context(_run_log(self.out, self.level))
        log.info("vbbackup %s of %s into %s", self.level, self.config.domain, self.out.path)

    def _inspect_domain(self, stack: ExitStack) -> None:
        """A running domain without a stale job; its disks, chosen and inspected."""
        dom = self.dom
        stack.enter_context(domain_ready(dom, self.ops, self.say, copy=self.level == COPY))
        stale = end_stale_job(dom)
        if stale:
            self.say(f"ended a backup job left by a run that died (socket {stale})")
        clear_jobs(dom, self.ops, self.say)
        self.domain_xml = dom.XMLDesc(0)
        self.all_disks = domain_disks(self.domain_xml)
        self.chosen, self.skipped = select_disks(self.all_disks, self.config, self.level)
        for target, why in self.skipped.items():
            self.say(f"{target}: skipped: {why}")
        self.infos = {
            d.target: image_info(d.path, self.ssh)
            for d in self.chosen
            if d.path and d.type != "network"
        }
        _check_bitmap_capable(self.chosen, self.infos, self.level)
        self.cps = Checkpoints(dom)
        self.chain = self.out.checkpoints()
        self.bitmap_disks = [d.target for d in self.chosen if d.bitmap_capable]

    def _measure_changes(self) -> BackupResult | None:
        """--estimate and --threshold: the result of a run that writes nothing, or None."""
        if not self.ops.estimate and self.ops.threshold is None:
            return None
        if self.cps.exists(self.chain[-1]):  # another chain's bitmap measures other writes
            try:
                _prove_identity(self.out, self.cps, self.chain[-1])
            except BrokenChainError as err:
                if not self.ops.estimate:
                    raise  # --threshold: the chain cannot go on, a full falls back as usual
                raise ChainError(f"{err}; nothing to estimate") from None
        changes = estimate_changes(self.dom, self.chain[-1], self.bitmap_disks)
        if self.ops.estimate:
            return self._result(None, [], estimate=changes)
        if below_threshold(changes, self.ops, self.say):
            return self._result(None, [])
        return None

    def _check_chain(self, parent: str | None, new_cp: str | None) -> None:
        """Before any job: sizes and bitmaps fit the chain; no orphaned bitmap is in the way."""
        if self.level in (INC, DIFF):
            _check_sizes(self.out, self.chosen, self.infos)
        if parent is not None:
            check_bitmaps(self.dom, parent, self.bitmap_disks)
        if new_cp:
            all_targets = [d.target for d in self.all_disks]
            drop_orphans(self.dom, new_cp, self.bitmap_disks, all_targets, self.say)

    def _clear_leftovers(self, plans: list[_DiskPlan]) -> None:
        """Remove what a run that died left; refuse to overwrite a finished stream."""
        leftovers = self.out.partial_files()
        if self.level == INC:  # streams of a checkpoint that never made it into the chain
            leftovers += [p.path for p in plans if p.path.exists()]
        if leftovers:
            names = ", ".join(p.name for p in leftovers)
            self.say(f"removing files left by a run that did not finish: {names}")
            self.out.remove(leftovers)
        for plan in plans:
            if plan.path.exists():
                raise TargetExistsError(f"{plan.path} already exists; refusing to overwrite it")

    def _begin_job(
        self, stack: ExitStack, plans: list[_DiskPlan], parent: str | None, new_cp: str | None
    ) -> BackupJob:
        """The pull job (and the new checkpoint), guest filesystems frozen around its start."""
        chain_targets = [p.disk.target for p in plans if p.level != COPY]
        others = [d.target for d in self.all_disks if d.target not in chain_targets]
        self.out.mark_pending(PendingRun(self.level, new_cp, tuple(p.path.name for p in plans)))
        # runs after the job has ended (the stack unwinds in reverse): a run that fails, is
        # interrupted (SIGTERM, SIGINT, SIGHUP) or fills the disk undoes itself
        stack.callback(self._undo_uncommitted)
        freezer = freeze(self.dom, self.ops, self.say)
        with freezer:  # thawed as soon as the job has begun
            job = stack.enter_context(
                BackupJob(
                    self.dom,
                    [p.disk.target for p in plans],
                    [d.target for d in self.all_disks if d not in self.chosen],
                    self.config.scratch_dir,
                    incremental=parent if self.level in (INC, DIFF) else None,
                    checkpoint_xml=checkpoint_xml(new_cp, chain_targets, others)
                    if new_cp
                    else None,
                    tcp=self.tcp,
                    tls=self.ops.tls,
                )
            )
        self.consistency = freezer.consistency()
        log.info("%s", consistency_line(self.consistency))  # the summary says it at the end
        return job

    def _undo_uncommitted(self) -> None:
        """What this run made (checkpoint, finished files), unless it committed."""
        try:  # into the run's log only: the error stays the one line on stderr
            _undo_pending(self.out, self.cps, log.info, "this run, which did not finish")
        except VbError as err:  # the run's own error matters more; the next run retries
            log.warning("could not undo the unfinished run: %s", err)

    def _save_side_files(self, ident: str, new_cp: str | None) -> None:
        """Checkpoint XML, domain XML, boot files and ``qemu-img info`` beside the streams."""
        if new_cp:
            self.out.save_checkpoint_xml(new_cp, self.cps.dump(new_cp))
        self.out.save_consistency(ident, self.consistency)
        self.out.save_vmconfig(ident, self.domain_xml)
        boot_ident = None if self.level == COPY else ident
        save_boot_files(self.domain_xml, self.out.path, boot_ident, self.ssh)
        for target, info in self.infos.items():
            self.out.save_image_info(target, ident, info)

    def _result(
        self, checkpoint: str | None, disks: list[DiskResult], estimate: Estimate | None = None
    ) -> BackupResult:
        return BackupResult(
            domain=self.config.domain,
            level=self.level,
            directory=str(self.out.path),
            checkpoint=checkpoint,
            disks=disks,
            skipped=self.skipped,
            seconds=time.monotonic() - self.started,
            estimate=estimate,
            consistency=getattr(self, "consistency", None),
        )


def _resolve_level(level: str, out: BackupDir) -> str:
    """``auto``: full into an empty or new directory, inc where a chain is."""
    if level != AUTO:
        return level
    if out.checkpoints():
        return INC
    if not [p for p in out.data_files() if not p.name.endswith(".copy.data")]:
        return FULL
    raise ChainError(
        f"{out.path} holds backup files but no {out.cpt_path.name}: "
        "`auto` cannot tell what to do; use a new directory"
    )


@contextmanager
def _run_log(out: BackupDir, level: str) -> Iterator[None]:
    """``backup.<level>.<time>.log`` in the output directory: the run's own log."""
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    handler = logging.FileHandler(out.log_path(level, stamp))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("vbbackup")
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        yield
    except BaseException as err:
        log.error("failed: %s", err)
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def select_disks(
    disks: list[DomainDisk], config: BackupConfig, level: str
) -> tuple[list[DomainDisk], dict[str, str]]:
    """The disks this run backs up, and why each other one is left out."""
    targets = {d.target for d in disks}
    for name in (*config.include, *config.exclude):
        if name not in targets:
            raise UsageError(
                f"domain {config.domain!r} has no disk {name!r} "
                f"(disks: {', '.join(sorted(targets))})"
            )
    chosen: list[DomainDisk] = []
    skipped: dict[str, str] = {}
    for d in disks:
        if config.include and d.target not in config.include:
            skipped[d.target] = "not included"
        elif d.target in config.exclude:
            skipped[d.target] = "excluded"
        elif d.removable:
            skipped[d.target] = f"{d.device} drives are never backed up"
        elif not d.has_medium:
            skipped[d.target] = "no medium"
        elif not d.bitmap_capable and not config.raw:
            kind = "direct-attached LUN" if d.device == "lun" else f"{d.format or 'raw'} image"
            skipped[d.target] = f"{kind} cannot carry checkpoints (--raw copies it whole)"
        elif not d.bitmap_capable and level in (INC, DIFF):
            skipped[d.target] = f"{d.format or 'raw'} disk: only full and copy back it up"
        else:
            chosen.append(d)
    if not chosen:
        raise UsageError(
            f"nothing to back up in domain {config.domain!r}: "
            + "; ".join(f"{t}: {why}" for t, why in skipped.items())
        )
    return chosen, skipped


def _check_bitmap_capable(
    disks: list[DomainDisk], infos: dict[str, dict[str, Any]], level: str
) -> None:
    if level == COPY:
        return
    for d in disks:
        info = infos.get(d.target)
        if d.bitmap_capable and info is not None and qcow2_compat(info) == "0.10":
            raise LibvirtError(
                f"disk {d.target} ({d.path}) is a qcow2 v2 image (compat=0.10), which cannot "
                f"hold the dirty bitmaps of checkpoints: back it up with `vbbackup copy`, or "
                f"upgrade it (domain shut off) with `qemu-img amend -o compat=1.1 {d.path}`"
            )


def _plan_checkpoints(
    level: str,
    out: BackupDir,
    cps: Checkpoints,
    chain: list[str],
    disks: list[DomainDisk],
    reporter: Reporter,
) -> tuple[str | None, str | None, str]:
    """(incremental parent, checkpoint to create, checkpoint name for the meta)."""
    _undo_pending(out, cps, reporter.info, "a run that did not finish")
    if level == COPY:
        return None, None, checkpoint_name(0)  # what virtnbdbackup writes in a copy's meta
    if level == FULL:  # a chain of its own: other chains' checkpoints stay (see virt.checkpoints)
        out.check_new_chain()
        first = checkpoint_name(0, f"vbbackup.{new_chain_id()}")
        return None, first, first
    _require_chain(out, chain)
    for d in disks:
        if d.bitmap_capable and not out.data_path(d.target, FULL, "").exists():
            raise ChainError(
                f"disk {d.target} has no full backup in {out.path} (added after the full?): "
                "start a new chain with `vbbackup full` into a new directory"
            )
    parent = chain[-1]
    index, nxt = checkpoint_index(parent), following(parent)
    if index is None or nxt is None:
        raise ChainError(f"{out.cpt_path}: {parent!r} is not a backup checkpoint name")
    _ensure_chain_checkpoints(out, cps, chain)
    _prove_identity(out, cps, parent)
    stale = [
        n
        for n in cps.names(chain_of(parent))
        if n not in chain and (checkpoint_index(n) or 0) > index
    ]
    if stale:
        cps.delete(stale)
        reporter.info(f"deleted checkpoints {', '.join(stale)} of a run that did not finish")
    return parent, (nxt if level == INC else None), nxt


def _undo_pending(out: BackupDir, cps: Checkpoints, say: Say, whose: str) -> None:
    """Undo what an uncommitted run left (its commit record says what): checkpoint, files."""
    pending = out.pending()
    if pending is None:
        return
    committed = pending.checkpoint is not None and pending.checkpoint in out.checkpoints()
    if not committed:
        if pending.checkpoint and cps.delete([pending.checkpoint]):
            say(f"deleted checkpoints {pending.checkpoint} of {whose}")
        left = [out.path / name for name in pending.files if (out.path / name).exists()]
        if left:
            say(f"removing files of {whose}: {', '.join(p.name for p in left)}")
            out.remove(left)
    out.clear_pending()


def _prove_identity(out: BackupDir, cps: Checkpoints, parent: str) -> None:
    """The libvirt checkpoint an inc/diff reads from is the one this set recorded.

    Checkpoint names are reused (another set's full, virtnbdbackup): a bitmap of
    the same name from another chain would give an incremental that misses writes.
    """
    saved = out.checkpoint_xml(parent)
    if saved is None:
        raise BrokenChainError(
            f"{out.checkpoint_dir}/{parent}.xml is missing: nothing proves that libvirt's "
            f"checkpoint {parent} belongs to the chain in {out.path}"
        )
    mismatch = identity_mismatch(parent, saved, cps.dump(parent))
    if mismatch:
        raise BrokenChainError(f"{mismatch}; an incremental from it would miss changes")


def _require_whole_chain(out: BackupDir, chain: list[str]) -> None:
    """A chain with a hole, or whose newest file is damaged, is never extended."""
    try:
        backup = BackupSet(out.path)
        for disk in backup.disks:
            if not out.data_path(disk, FULL, "").exists():
                continue  # a --raw disk's copy: no chain
            with PointInTimeView(backup.resolve(disk, chain[-1])):
                pass  # every file indexed, layouts checked against their .sums
    except (ChainError, StreamFormatError) as err:
        raise ChainError(
            f"cannot extend the chain in {out.path}: {err}; "
            f"start a new chain with `vbbackup full {out.domain} -o NEW_DIR`"
        ) from None


def _require_chain(out: BackupDir, chain: list[str]) -> None:
    if not chain:
        raise ChainError(
            f"no full backup in {out.path} ({out.cpt_path.name} is missing): "
            f"run `vbbackup full {out.domain} -o {out.path}` first"
        )


def _check_sizes(out: BackupDir, disks: list[DomainDisk], infos: dict[str, dict[str, Any]]) -> None:
    """A disk resized since the full cannot continue the chain (its streams would not fit)."""
    for d in disks:
        info = infos.get(d.target)
        full = out.data_path(d.target, FULL, "")
        if info is None or not d.bitmap_capable or not full.exists():
            continue
        with open(full, "rb") as f:
            was = read_index(f, str(full)).meta.virtual_size
        now = int(info.get("virtual-size", was))
        if now != was:
            raise ChainError(
                f"disk {d.target} changed size since the full backup ({was} -> {now} bytes): "
                "start a new chain with `vbbackup full` into a new directory"
            )


def _ensure_chain_checkpoints(out: BackupDir, cps: Checkpoints, chain: list[str]) -> None:
    """Redefine checkpoints libvirt lost (host reinstall, domain moved) from saved XML."""
    present = set(cps.names())
    for name in chain:
        if name in present:
            continue
        xml = out.checkpoint_xml(name)
        try:
            if xml is None:
                raise LibvirtError(f"no {out.path}/checkpoints/{name}.xml")
            cps.redefine(xml)
        except LibvirtError as err:
            raise BrokenChainError(
                f"checkpoint {name} of the chain in {out.path} is gone from domain "
                f"{out.domain!r} and cannot be redefined ({err}); a full backup elsewhere "
                "may have started a new chain: run `vbbackup full` into a new directory"
            ) from None


def _plan_disk(
    disk: DomainDisk, level: str, out: BackupDir, ident: str, meta_cp: str, parent: str | None
) -> _DiskPlan:
    disk_level = level if disk.bitmap_capable else COPY
    return _DiskPlan(
        disk=disk,
        level=disk_level,
        path=out.data_path(disk.target, disk_level, ident),
        incremental=disk_level in (INC, DIFF),
        checkpoint=meta_cp,
        parent=parent if disk_level in (INC, DIFF) else None,
    )


def _backup_disks(
    job: BackupJob, plans: list[_DiskPlan], config: BackupConfig, reporter: Reporter
) -> list[DiskResult]:
    """All disks, ``config.workers`` at a time; the first failure stops the others."""
    stop = threading.Event()
    workers = max(1, config.workers or len(plans))
    compress_threads = max(1, os.cpu_count() or 1) if config.compress is not None else 0
    with ThreadPoolExecutor(workers, "disk") as disks, ExitStack() as stack:
        pool = (
            stack.enter_context(ThreadPoolExecutor(compress_threads, "lz4"))
            if compress_threads
            else None
        )
        futures: list[Future[DiskResult]] = [
            disks.submit(
                _backup_disk, job.socket, job.disks[p.disk.target], p, config, pool, stop, reporter
            )  # fmt: skip
            for p in plans
        ]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
                for fut in done:
                    fut.result()
        except BaseException:
            stop.set()
            raise
    return [f.result() for f in futures]


def _backup_disk(
    socket: Path,
    jd: JobDisk,
    plan: _DiskPlan,
    config: BackupConfig,
    pool: ThreadPoolExecutor | None,
    stop: threading.Event,
    reporter: Reporter,
) -> DiskResult:
    started = time.monotonic()
    target = plan.disk.target
    tcp = nbd_tcp(config.uri, config.ops)
    with NbdReader(
        socket=None if tcp else socket,
        tcp=tcp,
        tls_dir=tls_dir(config.ops),
        export=jd.export,
        bitmap=jd.bitmap if plan.incremental else None,
        request_size=config.request_size,
        in_flight=config.in_flight,
    ) as reader:
        allocation, dirty = reader.extents()
        extents = _extents_to_write(plan, allocation, dirty, config.sparse_detection)
        meta = StreamMeta(
            virtual_size=reader.size,
            data_size=data_size(extents),
            date=datetime.now().isoformat(),
            disk_name=target,
            disk_format=plan.disk.format or "raw",
            checkpoint_name=plan.checkpoint,
            parent_checkpoint=plan.parent,
            incremental=plan.incremental,
            compressed=config.compress if config.compress is not None else False,
        )
        reporter.disk_started(target, meta.data_size)
        log.info("%s: %d extents, %d data bytes -> %s", target, len(extents), meta.data_size,
                 plan.path.name)  # fmt: skip
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            reporter.disk_progress(target, done)

        try:
            with atomic_output(plan.path) as f, WritebackFile(f) as out:
                writer = StreamWriter(out, meta)  # type: ignore[arg-type]
                copy_extents(
                    reader,
                    extents,
                    writer,
                    pool=pool,
                    level=config.compress or 0,
                    stop=stop,
                    progress=progress,
                    out=out,
                )
                writer.finish()
            write_stream_checks(plan.path, writer)
        except OSError as err:
            raise VbError(f"cannot write {plan.path}: {err.strerror or err}") from None
    result = DiskResult(
        target=target,
        level=plan.level,
        path=str(plan.path),
        data_bytes=meta.data_size,
        zero_bytes=sum(e.length for e in extents if e.zero),
        file_bytes=plan.path.stat().st_size,
        seconds=time.monotonic() - started,
    )
    log.info("%s: %d data bytes, file %d bytes, %.1f s", target, result.data_bytes,
             result.file_bytes, result.seconds)  # fmt: skip
    reporter.disk_done(result)
    return result


def _extents_to_write(
    plan: _DiskPlan, allocation: list[Extent], dirty: list[tuple[int, int]], sparse: bool
) -> list[Extent]:
    """Full/copy: the whole allocation map. Inc/diff: dirty ranges, zero where they now are."""
    if not plan.incremental:
        return allocation
    if sparse:
        return changed_extents(dirty, allocation)
    return [Extent(start, length, False) for start, length in dirty]
