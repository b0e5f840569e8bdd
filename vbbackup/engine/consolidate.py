"""Synthetic full: merge a chain's full and incrementals up to CP into one full.

Before and after, for ``--until virtnbdbackup.2``::

    vm.cpt  [.0 .1 .2 .3]            vm.cpt  [.0 .1 .2 .3]   (unchanged: numbering goes on)
    vda.full.data          (cp .0)   vda.full.data          (cp .2, written from the view)
    vda.inc.…1.data        (cp .1)
    vda.inc.…2.data        (cp .2)
    vda.inc.…3.data        (cp .3)   vda.inc.…3.data        (cp .3, untouched)

Steps, each leaving a set that restores, whatever moment a crash hits:

1. ``vda.full.data.partial`` from the chain view at CP (readers skip it);
   its mtime is set to the old full's, because virtnbdrestore orders a
   disk's files by mtime.
2. The old full's checksum file goes (a missing checksum is "unchecked",
   a stale one "corrupt"), then the rename swaps the full, then the new
   checksum is written. Between the swap and step 3 the merged
   incrementals are still there: our chain reader skips them (the chain
   starts at the full's checkpoint), and virtnbdrestore replays them over
   the state at CP, which is idempotent (each byte ends as its last writer
   among them left it).
3. The merged incrementals go oldest first, the directory synced after
   each: any crash leaves a suffix of them, and replaying a suffix is
   idempotent in the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vbbackup import fsutil
from vbbackup.chain import DIFF, FULL, INC, BackupSet, DataFile, PointInTime, PointInTimeView
from vbbackup.engine.lock import directory_lock
from vbbackup.errors import ChainError, VbError
from vbbackup.format import MAX_CHUNK, PayloadReader, StreamMeta, StreamWriter, read_index
from vbbackup.virt.checkpoints import chain_of


@dataclass(frozen=True)
class ConsolidateConfig:
    directory: Path
    until: str | None = None  # default: the chain's newest checkpoint


@dataclass(frozen=True)
class DiskPlan:
    """What consolidation does to one disk."""

    disk: str
    point: PointInTime
    full: DataFile
    merged: tuple[DataFile, ...]  # the incrementals folded into the new full
    leftovers: tuple[DataFile, ...] = ()  # merged by an earlier, interrupted run


def plan(config: ConsolidateConfig) -> list[DiskPlan]:
    """Check the set and work out, per disk, which files the new full replaces."""
    backup_set = BackupSet(config.directory)
    plans = []
    for disk in backup_set.disks:
        points = [p for p in backup_set.points(disk) if p.files[0].level == FULL]
        base = [p for p in points if p.files[-1].level != DIFF]
        if not base:
            raise ChainError(f"disk {disk} in {config.directory} has no full backup to merge into")
        names = [p.name for p in base]
        listed = [n for n in backup_set.checkpoints or () if chain_of(n) is not None]
        until = config.until or (listed[-1] if listed else names[-1])
        if until not in names:
            backup_set.resolve(disk, until)  # a file missing in the chain: its own message
            raise ChainError(
                f"unknown checkpoint {until!r} for disk {disk} (chain: {', '.join(names)})"
            )
        point = base[names.index(until)]
        _refuse_orphaned_diffs(points, point, disk)
        leftovers = _leftovers(backup_set, disk, point.files[0])
        plans.append(DiskPlan(disk, point, point.files[0], point.files[1:], leftovers))
    return plans


def _leftovers(backup_set: BackupSet, disk: str, full: DataFile) -> tuple[DataFile, ...]:
    """Incrementals up to the full's checkpoint: a crash in step 3 left them."""
    names = list(backup_set.checkpoints or ())
    first = backup_set.meta(full).checkpoint_name
    if first not in names:
        return ()
    earlier = names[: names.index(first) + 1]
    incs = {f.ident: f for f in backup_set.files(disk) if f.level == INC}
    return tuple(incs[name] for name in earlier if name in incs)


def _refuse_orphaned_diffs(points: list[PointInTime], until: PointInTime, disk: str) -> None:
    """A differential on a checkpoint before ``until`` would lose its base."""
    merged = {f.path for f in until.files[:-1]}
    for point in points:
        if point.files[-1].level == DIFF and point.files[-2].path in merged:
            raise ChainError(
                f"{point.files[-1].path} is a differential on checkpoint "
                f"{point.metas[-2].checkpoint_name}, which consolidating disk {disk} up to "
                f"{until.name} would merge away; consolidate up to that checkpoint at most, "
                "or remove the differential first"
            )


def consolidate(config: ConsolidateConfig, report: Callable[[str], None] = print) -> None:
    """Write each disk's synthetic full, then drop the incrementals it holds."""
    with directory_lock(config.directory, "consolidating it"):
        _consolidate(config, report)


def _consolidate(config: ConsolidateConfig, report: Callable[[str], None]) -> None:
    plans = plan(config)
    first = next(iter(BackupSet(config.directory).checkpoints or ()), None)
    for item in plans:
        if not item.merged:
            report(f"{item.disk}: already a full at {item.point.name}, nothing to merge")
            continue
        report(
            f"{item.disk}: merging {item.full.name} and {len(item.merged)} incrementals "
            f"up to {item.point.name}"
        )
        _write_full(item)
    for item in plans:  # before any removal: then every merged file has its placeholder
        for data in item.leftovers + item.merged:
            _write_placeholder(item, data)
    for item in plans:
        for data in item.leftovers + item.merged:
            _remove_durably(fsutil.checksum_path(data.path))
            _remove_durably(fsutil.sums_path(data.path))
            _remove_durably(data.path)
            report(f"{item.disk}: removed {data.name}")
        if _synthetic(item, first) and _write_missing_checks(item.full.path):
            # a run killed between the swap and the full's checks: this one finishes it
            report(f"{item.disk}: wrote the missing {item.full.name}.chksum and .sums")
        if item.merged:
            report(f"{item.disk}: {item.full.name} now holds checkpoint {item.point.name}")


def placeholder_path(data: DataFile) -> Path:
    """``vda.merged.<checkpoint>.data``: not a data file to our readers (no level matches)."""
    return data.path.with_name(f"{data.disk}.merged.{data.ident}.data")


def _write_placeholder(item: DiskPlan, data: DataFile) -> None:
    """An empty stream in the merged incremental's place (and with its mtime).

    virtnbdrestore 2.47 finds a disk's files by mtime and sizes the target from
    "the file at index N" for ``--until <name>.N``: with one file per checkpoint
    kept, every later checkpoint restores; the placeholder restores nothing and
    names no checkpoint (so it never stops a restore early).
    """
    path = placeholder_path(data)
    meta = StreamMeta(
        virtual_size=item.point.virtual_size,
        data_size=0,
        date=item.point.meta.date,
        disk_name=item.disk,
        disk_format=item.point.meta.disk_format,
        checkpoint_name=f"merged-{data.ident}",
        parent_checkpoint=None,
        incremental=True,
        compressed=False,
    )
    with fsutil.atomic_output(path, overwrite=True) as f:
        writer = StreamWriter(f, meta)
        writer.finish()
    fsutil.write_stream_checks(path, writer)
    stat = data.path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _synthetic(item: DiskPlan, first: str | None) -> bool:
    """The full is one a consolidate wrote: it holds a later checkpoint than the chain's first."""
    return first is not None and item.point.metas[0].checkpoint_name != first


def _write_missing_checks(path: Path) -> bool:
    """The synthetic full's ``.chksum`` and ``.sums`` when a killed run left it without.

    The full was fsync'ed before its rename, so its bytes are the ones written:
    what is computed from them now is what the run would have written.
    """
    if fsutil.checksum_path(path).exists() and fsutil.sums_path(path).exists():
        return False
    with open(path, "rb") as f:
        reader = PayloadReader(f, read_index(f, str(path)), cache_chunks=0)
        sums = reader.compute_sums(path.name)
    if not fsutil.checksum_path(path).exists():
        fsutil.write_checksum(path, fsutil.file_adler32(path))
    fsutil.write_sums(path, sums, overwrite=True)
    return True


def _write_full(item: DiskPlan) -> None:
    """Steps 1 and 2 of the module docstring for one disk."""
    target = item.full.path
    old_meta = item.point.metas[0]
    newest = item.point.meta
    partial = fsutil.partial_path(target)
    with PointInTimeView(item.point) as view:
        extents = view.extents(0, view.size)
        meta = StreamMeta(
            virtual_size=view.size,
            data_size=sum(n for _, n, zero in extents if not zero),
            date=newest.date,
            disk_name=old_meta.disk_name,
            disk_format=old_meta.disk_format,
            checkpoint_name=newest.checkpoint_name,
            parent_checkpoint=None,
            incremental=False,
            compressed=old_meta.compressed,
            compression_method=old_meta.compression_method,
        )
        partial.unlink(missing_ok=True)  # left by an interrupted run
        with fsutil.atomic_output(partial) as f:
            writer = StreamWriter(f, meta)
            for offset, length, zero in extents:
                if zero:
                    writer.write_zero(offset, length)
                    continue
                # bounded reads; a compressed stream turns each lz4 piece into its own frame
                for start in range(offset, offset + length, MAX_CHUNK):
                    n = min(MAX_CHUNK, offset + length - start)
                    writer.begin_data(start, n)
                    writer.write_chunk(view.read(start, n))
                    writer.end_data()
            writer.finish()
    stat = target.stat()
    os.utime(partial, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    _copy_qemu_info(item)
    _remove_durably(fsutil.checksum_path(target))
    _remove_durably(fsutil.sums_path(target))
    try:
        os.replace(partial, target)
    except OSError as err:
        raise VbError(f"cannot replace {target}: {err.strerror}") from None
    fsutil.fsync_dir(target.parent)
    fsutil.write_stream_checks(target, writer)


def _copy_qemu_info(item: DiskPlan) -> None:
    """Restore looks for ``<disk>.<full's checkpoint>.qcow.json``: make sure it exists."""
    directory = item.full.path.parent
    wanted = directory / f"{item.disk}.{item.point.name}.qcow.json"
    source = directory / f"{item.disk}.{item.point.metas[0].checkpoint_name}.qcow.json"
    if not wanted.exists() and source.exists():
        fsutil.write_small_file(wanted, source.read_bytes(), overwrite=False)


def _remove_durably(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    except OSError as err:
        raise VbError(f"cannot remove {path}: {err.strerror}") from None
    fsutil.fsync_dir(path.parent)
