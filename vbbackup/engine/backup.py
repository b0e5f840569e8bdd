"""``vbbackup full|inc|diff|copy|auto``: one run of the backup engine.

Order of a run, so that a crash at any point leaves a restorable set:
lock the domain -> inspect disks -> plan checkpoints -> begin the pull job
(creates the new checkpoint) -> side files -> one stream per disk, each to
``*.partial`` and renamed when complete -> ``DOMAIN.cpt`` last -> end the job.

The pieces: ``backup_types`` (config, results, reporter), ``backup_plan``
(pure planning, no libvirt), ``backup_disk`` (one disk's stream and its
checks, over ``diskstream``'s data path), ``backup_ops`` (the admin options'
steps); this module runs them in order and owns the libvirt side of the
chain (checkpoints, their identity, undoing an unfinished run).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, ExitStack
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import libvirt

from vbbackup.chain.backupset import PendingRun
from vbbackup.engine.backup_disk import backup_disks
from vbbackup.engine.backup_ops import (
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
    paused,
    refuse_or_fall_back,
    tls_dir,
)
from vbbackup.engine.backup_plan import (  # noqa: F401 - select_disks: public
    check_bitmap_capable,
    check_sizes,
    plan_disk,
    require_chain,
    require_whole_chain,
    resolve_level,
    select_disks,
)
from vbbackup.engine.backup_types import (  # noqa: F401 - the public names of a run
    AUTO,
    LEVELS,
    BackupConfig,
    BackupResult,
    DiskPlan,
    DiskResult,
    Reporter,
)
from vbbackup.engine.backupset import COPY, DIFF, FULL, INC, BackupDir
from vbbackup.engine.lock import directory_lock, domain_lock
from vbbackup.errors import (
    ChainError,
    LibvirtError,
    TargetExistsError,
    UsageError,
    VbError,
)
from vbbackup.fsutil import run_log
from vbbackup.virt import (
    BackupJob,
    Checkpoints,
    DomainDisk,
    checkpoint_index,
    domain_disks,
    image_info,
    libvirt_connection,
    lookup_domain,
    tpmstate,
)
from vbbackup.virt.agent import consistency_line, guest_os
from vbbackup.virt.bootfiles import save_boot_files
from vbbackup.virt.checkpoints import (
    chain_of,
    checkpoint_name,
    checkpoint_xml,
    following,
    identity_mismatch,
    new_chain_id,
)
from vbbackup.virt.domainxml import emulated_tpms
from vbbackup.virt.job import end_stale_job
from vbbackup.virt.remote import ssh_prefix

log = logging.getLogger("vbbackup.backup")


def run_backup(config: BackupConfig, reporter: Reporter | None = None) -> BackupResult:
    """Back up one domain into ``config.output``; see the module docstring.

    A chain that cannot go on falls back to a full into the next chain directory
    (``DIR.1``...) with a warning, or fails with ``--no-fallback`` (see backup_ops).
    """
    reporter = reporter or Reporter()
    try:
        return _Run(config, reporter).run()
    except BrokenChainError as err:
        target = refuse_or_fall_back(config.output, str(err), config.ops, reporter.warn)
        ops = replace(config.ops, checkpoint_dir=None)  # the old chain's XML stays untouched
        return _Run(replace(config, level=FULL, output=target, ops=ops), reporter).run()


USER_SKIPS = ("not included", "excluded", "no medium")


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
    domain_xml: str  # _inspect_domain: the running domain's, disks and boot files come from it
    saved_xml: str  # _inspect_domain: saved as vmconfig.<ident>.xml
    domain_state: dict[str, Any]  # _inspect_domain: saved as domain.<ident>.json
    tpm_source: Path | None  # _inspect_domain: the vTPM's state directory, when local
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
            if self.level == DIFF:
                ident: str | None = self.out.diff_ident(int(time.time()))
            else:
                ident = {FULL: new_cp, INC: new_cp, COPY: COPY}[self.level]
            plans = [plan_disk(d, self.level, self.out, ident or "", meta_cp, parent)
                     for d in self.chosen]  # fmt: skip
            self._clear_leftovers(plans)
            job = self._begin_job(stack, plans, parent, new_cp)
            self._save_side_files(ident or COPY, new_cp)
            results = backup_disks(job, plans, self.config, self.reporter)
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
        self.level = resolve_level(self.config.level, self.out)
        check_options(self.level, self.ops, auto=self.config.level == AUTO)
        if self.level in (INC, DIFF):
            require_chain(self.out, self.out.checkpoints())
            require_whole_chain(self.out, self.out.checkpoints())
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
        # what restore defines: the persistent definition (no live-only aliases, pty paths,
        # channel states); a transient domain has only the live one
        self.saved_xml = (
            dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if dom.isPersistent() else self.domain_xml
        )
        self.all_disks = domain_disks(self.domain_xml)
        self.domain_state = self._domain_state()
        self.chosen, self.skipped = select_disks(self.all_disks, self.config, self.level)
        for target, why in self.skipped.items():
            if why in USER_SKIPS or "drives are never" in why:
                self.say(f"{target}: skipped: {why}")
            else:  # a disk of the domain whose data this run does not save
                self.reporter.warn(f"{target}: skipped: {why}")
        self.infos = {
            d.target: image_info(d.path, self.ssh)
            for d in self.chosen
            if d.path and d.type != "network"
        }
        check_bitmap_capable(self.chosen, self.infos, self.level)
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
            check_sizes(self.out, self.chosen, self.infos)
        if parent is not None:
            check_bitmaps(self.dom, parent, self.bitmap_disks)
        if new_cp:
            all_targets = [d.target for d in self.all_disks]
            drop_orphans(self.dom, new_cp, self.bitmap_disks, all_targets, self.say)

    def _clear_leftovers(self, plans: list[DiskPlan]) -> None:
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
        self, stack: ExitStack, plans: list[DiskPlan], parent: str | None, new_cp: str | None
    ) -> BackupJob:
        """The pull job (and the new checkpoint), guest filesystems frozen around its start."""
        chain_targets = [p.disk.target for p in plans if p.level != COPY]
        others = [d.target for d in self.all_disks if d.target not in chain_targets]
        self.out.mark_pending(PendingRun(self.level, new_cp, tuple(p.path.name for p in plans)))
        # runs after the job has ended (the stack unwinds in reverse): a run that fails, is
        # interrupted (SIGTERM, SIGINT, SIGHUP) or fills the disk undoes itself
        stack.callback(self._undo_uncommitted)
        freezer = freeze(self.dom, self.ops, self.reporter.warn)
        pause = paused(self.dom, self.ops.pause, self.say)
        with freezer, pause as was_paused:  # resumed, then thawed, once the job has begun
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
        if was_paused:
            self.consistency["paused"] = True  # suspended while the job started (--pause)
        log.info("%s", consistency_line(self.consistency))  # the summary says it at the end
        return job

    def _undo_uncommitted(self) -> None:
        """What this run made (checkpoint, finished files), unless it committed."""
        try:  # into the run's log only: the error stays the one line on stderr
            _undo_pending(self.out, self.cps, log.info, "this run, which did not finish")
        except VbError as err:  # the run's own error matters more; the next run retries
            log.warning("could not undo the unfinished run: %s", err)

    def _domain_state(self) -> dict[str, Any]:
        """What restore and info want beside the XML: autostart, the guest's OS (agent)."""
        tpms = emulated_tpms(self.domain_xml)
        self.tpm_source = None
        if tpms and not self.ssh:  # a remote host's state files are out of reach
            self.tpm_source = tpmstate.state_dir(self.dom.UUIDString(), self.dom.connect().getURI())
        try:
            autostart = bool(self.dom.autostart())
        except libvirt.libvirtError:
            autostart = False  # a transient domain has no autostart
        return {"autostart": autostart, "guest_os": guest_os(self.dom, self.domain_xml),
                "vtpm": tpms}  # fmt: skip

    def _save_tpm_state(self, ident: str) -> None:
        """``tpm.<ident>.tar``: the vTPM's state, or a warning that the backup lacks it."""
        tpms = self.domain_state.get("vtpm") or []
        if not tpms:
            return
        archive = self.out.path / f"tpm.{ident}.tar"
        if self.tpm_source is not None and tpmstate.save(self.tpm_source, archive):
            self.domain_state["vtpm_state"] = archive.name
            return
        self.reporter.warn(
            f"{self.dom.name()} has a vTPM ({', '.join(tpms)}, swtpm) whose state is out of "
            "reach (a remote host, or no state yet): it is not in the backup; a guest that "
            "keeps keys in it (BitLocker, LUKS bound to the TPM) may not boot from a restore "
            "without it"
        )

    def _save_side_files(self, ident: str, new_cp: str | None) -> None:
        """Checkpoint XML, domain XML, boot files and ``qemu-img info`` beside the streams."""
        if new_cp:
            self.out.save_checkpoint_xml(new_cp, self.cps.dump(new_cp))
        self.out.save_consistency(ident, self.consistency)
        self._save_tpm_state(ident)
        self.out.save_domain_state(ident, self.domain_state)
        self.out.save_vmconfig(ident, self.saved_xml)
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
            warnings=list(self.reporter.warnings),
            seconds=time.monotonic() - self.started,
            estimate=estimate,
            consistency=getattr(self, "consistency", None),
        )


def _run_log(out: BackupDir, level: str) -> AbstractContextManager[None]:
    """``backup.<level>.<time>.log`` in the output directory: the run's own log."""
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    return run_log(out.log_path(level, stamp), "backup log")


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
    require_chain(out, chain)
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
