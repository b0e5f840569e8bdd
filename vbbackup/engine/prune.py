"""Retention: remove whole old chains, never a chain's middle.

A backup root holds one directory per chain (a directory with a ``*.cpt``
and at least one ``*.full.data``)::

    ROOT/
        2026-11-01/   vm.cpt  vda.full.data  vda.inc.virtnbdbackup.1.data ...
        2026-11-08/   vm.cpt  vda.full.data ...
        notes/        (no chain: left alone)

Chains are ordered by the date in their full backup's meta; the newest
``keep`` stay. A directory is first renamed to ``.NAME.pruning`` and then
removed, so a crash leaves either the whole chain or a hidden leftover
that the next prune finishes removing.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import libvirt

from vbbackup.chain.backupset import read_checkpoint_list, read_meta
from vbbackup.engine.info import human_size
from vbbackup.engine.lock import directory_lock
from vbbackup.errors import ChainError, UsageError
from vbbackup.virt.checkpoints import Checkpoints, identity_mismatch
from vbbackup.virt.connection import libvirt_connection

PRUNING_SUFFIX = ".pruning"


@dataclass(frozen=True)
class PruneConfig:
    root: Path
    keep_chains: int
    dry_run: bool = False
    uri: str | None = None  # delete the removed chains' checkpoints on this libvirt host


@dataclass(frozen=True)
class ChainDir:
    """One chain directory and what the report says about it."""

    path: Path
    date: datetime
    files: int
    size: int


@dataclass(frozen=True)
class PruneResult:
    kept: tuple[ChainDir, ...]
    removed: tuple[ChainDir, ...]
    leftovers: tuple[Path, ...]


def is_chain_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.cpt")) and any(path.glob("*.full.data"))


def chain_date(path: Path) -> datetime:
    """The oldest full backup's date in the directory (all disks start together)."""
    dates = []
    for full in sorted(path.glob("*.full.data")):
        text = read_meta(full).date
        try:
            dates.append(datetime.fromisoformat(text))
        except ValueError:
            raise ChainError(f"{full}: meta date {text!r} is not an ISO 8601 date") from None
    return min(dates)


def _describe(path: Path) -> ChainDir:
    files = [p for p in path.rglob("*") if p.is_file()]
    return ChainDir(path, chain_date(path), len(files), sum(p.stat().st_size for p in files))


def find_chains(root: Path) -> list[ChainDir]:
    """The chain directories right below ``root``, oldest first."""
    if not root.is_dir():
        raise UsageError(f"backup root does not exist or is not a directory: {root}")
    if is_chain_dir(root):
        raise UsageError(
            f"{root} is itself a chain directory; give the directory that holds the chains"
        )
    # a directory an interrupted prune renamed is a leftover, never a chain (even while
    # its .cpt is still there)
    chains = [
        _describe(p)
        for p in sorted(root.iterdir())
        if is_chain_dir(p) and not p.name.endswith(PRUNING_SUFFIX)
    ]
    return sorted(chains, key=lambda c: (_naive(c.date), c.path.name))


def _naive(date: datetime) -> datetime:
    """Compare dates with and without a zone (virtnbdbackup writes local time)."""
    return date.replace(tzinfo=None) if date.tzinfo else date


def prune(config: PruneConfig, report: Callable[[str], None] = print) -> PruneResult:
    """Remove all but the newest ``keep_chains`` chain directories of the root."""
    if config.keep_chains < 1:
        raise UsageError(f"--keep-chains must be at least 1, not {config.keep_chains}")
    root = config.root
    chains = find_chains(root)
    leftovers = tuple(sorted(root.glob(f".*{PRUNING_SUFFIX}")))
    cut = max(0, len(chains) - config.keep_chains)
    old, kept = chains[:cut], chains[cut:]
    verb = "would remove" if config.dry_run else "removing"
    for path in leftovers:
        report(f"{verb} {path} (left by an interrupted prune)")
        if not config.dry_run:
            shutil.rmtree(path)
    for chain in old:
        report(f"{verb} {chain.path} ({_summary(chain)})")
        if not config.dry_run:
            with directory_lock(chain.path, "pruning it"):  # never under a running backup
                if config.uri is not None:
                    _drop_checkpoints(chain.path, config.uri, report)
                _remove(chain.path)
    for chain in kept:
        report(f"keeping {chain.path} ({_summary(chain)})")
    if not chains:
        report(f"no chain directories in {root}")
    return PruneResult(tuple(kept), tuple(old), leftovers)


def _drop_checkpoints(directory: Path, uri: str, report: Callable[[str], None]) -> None:
    """The libvirt checkpoints of a chain being removed: they only cost guest writes now.

    Only those libvirt holds with the identity the set recorded (another chain
    may have reused a name) are deleted, with their bitmaps.
    """
    cpts = sorted(directory.glob("*.cpt"))
    if not cpts:
        return
    cpt = cpts[0]
    domain = cpt.name[: -len(".cpt")]
    names = read_checkpoint_list(cpt)
    with libvirt_connection(uri) as conn:
        try:
            dom = conn.lookupByName(domain)
        except libvirt.libvirtError:
            report(f"{directory}: domain {domain!r} is not on {uri}: no checkpoints to delete")
            return
        cps = Checkpoints(dom)
        present = set(cps.names())
        mine = []
        for name in names:
            saved = directory / "checkpoints" / f"{name}.xml"
            same = name in present and saved.is_file()
            if same and identity_mismatch(name, saved.read_text(), cps.dump(name)) is None:
                mine.append(name)
        if mine:
            cps.delete(mine)
            report(f"deleted the checkpoints of {directory.name} from {domain}: {', '.join(mine)}")


def _summary(chain: ChainDir) -> str:
    date = chain.date.isoformat(sep=" ", timespec="seconds")
    return f"full of {date}, {chain.files} files, {human_size(chain.size)}"


def _remove(path: Path) -> None:
    """Rename out of sight first: a crash never leaves half a chain that looks whole."""
    doomed = path.with_name(f".{path.name}{PRUNING_SUFFIX}")
    try:
        path.rename(doomed)
        shutil.rmtree(doomed)
    except OSError as err:
        raise ChainError(f"cannot remove {path}: {err.strerror}") from None
