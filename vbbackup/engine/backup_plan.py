"""Planning a backup run without libvirt: which disks, which level, which files, which extents.

Pure steps over the domain's disk list and the output directory (which it only
reads); ``tests/engine/test_backup_units.py`` tests them without a VM.
"""

from __future__ import annotations

from typing import Any

from vbbackup.chain import BackupSet, PointInTimeView
from vbbackup.engine.backup_types import AUTO, BackupConfig, DiskPlan
from vbbackup.engine.backupset import COPY, DIFF, FULL, INC, BackupDir
from vbbackup.errors import (
    ChainError,
    LibvirtError,
    StreamFormatError,
    UsageError,
)
from vbbackup.format import read_index
from vbbackup.nbdio import Extent, changed_extents
from vbbackup.virt import (
    DomainDisk,
)
from vbbackup.virt.imageinfo import qcow2_compat


def resolve_level(level: str, out: BackupDir) -> str:
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


def check_bitmap_capable(
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


def require_whole_chain(out: BackupDir, chain: list[str]) -> None:
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


def require_chain(out: BackupDir, chain: list[str]) -> None:
    if not chain:
        raise ChainError(
            f"no full backup in {out.path} ({out.cpt_path.name} is missing): "
            f"run `vbbackup full {out.domain} -o {out.path}` first"
        )


def check_sizes(out: BackupDir, disks: list[DomainDisk], infos: dict[str, dict[str, Any]]) -> None:
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


def plan_disk(
    disk: DomainDisk, level: str, out: BackupDir, ident: str, meta_cp: str, parent: str | None
) -> DiskPlan:
    disk_level = level if disk.bitmap_capable else COPY
    return DiskPlan(
        disk=disk,
        level=disk_level,
        path=out.data_path(disk.target, disk_level, ident),
        incremental=disk_level in (INC, DIFF),
        checkpoint=meta_cp,
        parent=parent if disk_level in (INC, DIFF) else None,
    )


def extents_to_write(
    plan: DiskPlan, allocation: list[Extent], dirty: list[tuple[int, int]], sparse: bool
) -> list[Extent]:
    """Full/copy: the whole allocation map. Inc/diff: dirty ranges, zero where they now are."""
    if not plan.incremental:
        return allocation
    if sparse:
        return changed_extents(dirty, allocation)
    return [Extent(start, length, False) for start, length in dirty]
