"""What a backup directory holds, and what is wrong with its chain, from names and metas.

``info`` prints a survey; ``verify`` starts from one and adds the deep
checks of every byte. A survey never raises for a damaged set: every
problem (missing file, broken parent link, unreadable meta) is collected,
so the user sees all of them at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from vbbackup.chain import COPY, DIFF, FULL, INC, DataFile, read_meta
from vbbackup.chain.backupset import (
    disk_problem,
    follow_parents,
    link_problems,
    no_data_files,
    parse_data_name,
    read_checkpoint_list,
    read_pending,
    start_at_full,
)
from vbbackup.errors import ChainError, VbError
from vbbackup.format import StreamMeta
from vbbackup.fsutil import PARTIAL_SUFFIX, checksum_path

_LEVEL_ORDER = {FULL: 0, INC: 1, DIFF: 2, COPY: 3}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a set; ``position`` is a byte offset in ``path`` when known."""

    path: Path
    message: str
    position: int | None = None

    def __str__(self) -> str:
        if self.position is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}: at byte {self.position}: {self.message}"


@dataclass(frozen=True)
class FileEntry:
    """One data file of the set; ``meta`` is None when its meta frame is unreadable."""

    data: DataFile
    meta: StreamMeta | None
    file_size: int
    has_checksum: bool

    @property
    def path(self) -> Path:
        return self.data.path

    @property
    def checkpoint(self) -> str:
        """The checkpoint (or point) this file brings the disk to."""
        if self.data.level == DIFF:
            return f"diff.{self.data.ident}"
        if self.data.level == COPY:
            return COPY
        if self.meta is not None:
            return self.meta.checkpoint_name
        return self.data.ident


@dataclass
class Survey:
    """Disks, their files in chain order, the checkpoint list, and the problems found."""

    directory: Path
    domain: str | None
    checkpoints: tuple[str, ...] | None
    disks: dict[str, list[FileEntry]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def files(self) -> list[FileEntry]:
        return [entry for disk in sorted(self.disks) for entry in self.disks[disk]]


def survey(directory: Path | str) -> Survey:
    """Scan a backup directory; raise ChainError only when it is no backup set at all."""
    directory = Path(directory)
    if not directory.is_dir():
        if directory.exists():
            raise ChainError(f"not a directory: {directory}")
        raise ChainError(f"backup directory does not exist: {directory}")
    result = Survey(directory, None, None)
    result.checkpoints = _read_cpt(result)
    found: dict[str, list[FileEntry]] = {}
    try:
        pending = read_pending(directory)
    except ChainError as err:
        result.problems.append(Problem(directory, str(err)))
        pending = None
    uncommitted = set(pending.files) if pending else set()
    for path in sorted(directory.iterdir()):
        if path.name.endswith(PARTIAL_SUFFIX):
            result.warnings.append(f"{path}: unfinished file (an interrupted backup?), ignored")
            continue
        data = parse_data_name(path)
        if data is None or not path.is_file():
            continue
        if path.name in uncommitted:
            result.warnings.append(
                f"{path}: written by a backup that did not finish (not committed), ignored; "
                "the next backup into this directory removes it"
            )
            continue
        found.setdefault(data.disk, []).append(_entry(data, result))
    if not found:
        raise ChainError(no_data_files(directory))
    for disk, entries in sorted(found.items()):
        result.disks[disk] = _chain_order(entries, result.checkpoints)
        _check_disk(disk, result)
    if result.domain is None:
        result.domain = _domain_from_xml(directory)
    return result


def _entry(data: DataFile, result: Survey) -> FileEntry:
    meta: StreamMeta | None = None
    try:
        meta = read_meta(data.path)
    except VbError as err:
        position = getattr(err, "position", None)
        detail = getattr(err, "detail", str(err))
        result.problems.append(Problem(data.path, f"unreadable meta: {detail}", position))
    return FileEntry(
        data=data,
        meta=meta,
        file_size=data.path.stat().st_size,
        has_checksum=checksum_path(data.path).exists(),
    )


def _read_cpt(result: Survey) -> tuple[str, ...] | None:
    cpts = sorted(result.directory.glob("*.cpt"))
    if not cpts:
        return None
    if len(cpts) > 1:
        names = ", ".join(p.name for p in cpts)
        result.problems.append(Problem(result.directory, f"several checkpoint lists ({names})"))
    path = cpts[0]
    result.domain = path.name[: -len(".cpt")]
    try:
        return read_checkpoint_list(path)
    except ChainError as err:
        result.problems.append(Problem(path, str(err).removeprefix(f"{path}: ")))
        return None


def _chain_order(entries: list[FileEntry], checkpoints: tuple[str, ...] | None) -> list[FileEntry]:
    """full, incrementals in checkpoint-list order, differentials by time, copy."""
    rank = {name: k for k, name in enumerate(checkpoints or ())}

    def key(entry: FileEntry) -> tuple[int, int, str]:
        level = entry.data.level
        if level == INC:
            return (1, rank.get(entry.data.ident, len(rank)), entry.data.ident)
        if level == DIFF:
            return (2, int(entry.data.ident), "")
        return (_LEVEL_ORDER[level], 0, "")

    return sorted(entries, key=key)


def _check_disk(disk: str, result: Survey) -> None:
    """Every link of one disk's chain: full -> inc 1 -> ... -> inc N, diffs on a member."""
    entries = result.disks[disk]
    problems = result.problems
    for entry in entries:  # chain members get this rule with the others below
        if entry.meta is not None and entry.data.level in (DIFF, COPY):
            wrong = disk_problem(entry.meta, disk)
            if wrong:
                problems.append(Problem(entry.path, wrong))
    fulls = [e for e in entries if e.data.level == FULL]
    incs = {e.data.ident: e for e in entries if e.data.level == INC}
    if not fulls and not incs and any(e.data.level == COPY for e in entries):
        return  # a disk saved whole in every backup (raw disks): no chain to link
    names = _chain_names(fulls, incs, result.checkpoints)
    if not names:
        if incs or not any(e.data.level == COPY for e in entries):
            problems.append(
                Problem(result.directory / f"{disk}.full.data", "missing full backup of the disk")
            )
        return
    parent: str | None = None
    for k, name in enumerate(names):
        member = (fulls[0] if fulls else None) if k == 0 else incs.pop(name, None)
        expected = result.directory / (f"{disk}.full.data" if k == 0 else f"{disk}.inc.{name}.data")
        if member is None:
            what = "full backup" if k == 0 else "incremental"
            problems.append(Problem(expected, f"missing {what} (checkpoint {name})"))
        elif member.meta is not None:
            for message in link_problems(member.meta, disk, name, parent if k else None):
                problems.append(Problem(member.path, message))
        parent = name
    merged = set((result.checkpoints or ())[: _index_of(result.checkpoints, names[0]) + 1])
    for ident, entry in incs.items():
        if ident in merged:  # before the full's checkpoint: a consolidate that did not finish
            result.warnings.append(
                f"{entry.path}: merged into {disk}.full.data by a consolidate that did not "
                "finish; not part of the chain any more (`vbbackup consolidate` removes it)"
            )
            continue
        result.warnings.append(  # readers leave it out: the chain's points are not affected
            f"{entry.path}: incremental {ident!r} is not in the checkpoint list, not part of "
            "the chain (a run that did not finish?), ignored"
        )
    for entry in entries:
        if entry.data.level != DIFF or entry.meta is None:
            continue
        if entry.meta.parent_checkpoint not in names:
            problems.append(
                Problem(
                    entry.path,
                    f"broken parent link: parent checkpoint {entry.meta.parent_checkpoint!r} "
                    f"is not in the chain ({', '.join(names)})",
                )
            )


def _index_of(names: tuple[str, ...] | None, name: str) -> int:
    return names.index(name) if names and name in names else 0


def _chain_names(
    fulls: list[FileEntry], incs: dict[str, FileEntry], checkpoints: tuple[str, ...] | None
) -> list[str]:
    """Checkpoint names in chain order: the .cpt list, else follow the metas' parent links."""
    if checkpoints is not None:
        return start_at_full(list(checkpoints), fulls[0].meta if fulls else None)
    if not fulls or fulls[0].meta is None:
        return []
    children = {e.meta.parent_checkpoint: e.data.ident for e in incs.values() if e.meta}
    return follow_parents(fulls[0].meta.checkpoint_name, children)


def _domain_from_xml(directory: Path) -> str | None:
    for path in sorted(directory.glob("vmconfig.*.xml")):
        try:
            name = etree.parse(os.fspath(path)).findtext("name")
        except (OSError, etree.XMLSyntaxError):
            continue
        if name:
            return str(name)
    return None
