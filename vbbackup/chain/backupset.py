"""A backup directory resolved into per-disk chains and points in time.

One directory holds one chain (virtnbdbackup's layout, which vbbackup
writes too)::

    vm.cpt                         ["virtnbdbackup.0", "virtnbdbackup.1"]
    vda.full.data                  checkpoint virtnbdbackup.0
    vda.inc.virtnbdbackup.1.data   parent virtnbdbackup.0
    vda.diff.1764140000.data       parent virtnbdbackup.1 (not in .cpt)
    vda.copy.data                  standalone, no checkpoint

A point in time of a disk is the list of files to overlay, oldest first:
checkpoint K = full + incrementals 1..K; a differential = its parent's
files + the differential; ``copy`` = the copy alone.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from vbbackup.errors import ChainError, StreamFormatError
from vbbackup.format import StreamMeta, frames
from vbbackup.fsutil import PARTIAL_SUFFIX

FULL: Final = "full"
INC: Final = "inc"
DIFF: Final = "diff"
COPY: Final = "copy"
SAME_RUN_SECONDS: Final = 60  # the disks' differentials of one virtnbdbackup run, at most

_DATA_NAME = re.compile(
    r"^(?P<disk>[^.]+)\.(?:(?P<level>full|copy)|inc\.(?P<cp>.+)|diff\.(?P<ts>\d+))\.data$"
)
_MAX_META: Final = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One ``*.data`` stream of a backup set, named by the file-name rule.

    ``ident`` is the checkpoint name of an incremental, the unix time of a
    differential, and empty for a full or copy backup.
    """

    path: Path
    disk: str
    level: str
    ident: str

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class PointInTime:
    """A state of one disk that can be served: ``files`` overlaid in order."""

    name: str
    disk: str
    files: tuple[DataFile, ...]
    metas: tuple[StreamMeta, ...]

    @property
    def meta(self) -> StreamMeta:
        """Meta of the newest file: the disk's size and format at that point."""
        return self.metas[-1]

    @property
    def virtual_size(self) -> int:
        return self.meta.virtual_size

    @property
    def side_ident(self) -> str:
        """``<ident>`` of the side files saved with the newest file (vmconfig, qcow.json,
        boot files): the checkpoint for a full, ``copy`` for a copy, else the file's ident."""
        newest = self.files[-1]
        if newest.level == FULL:
            return self.meta.checkpoint_name
        if newest.level == COPY:
            return COPY
        return newest.ident


@dataclass(frozen=True)
class DiskInfo:
    """What restore needs to recreate a disk, as of its newest point."""

    name: str
    virtual_size: int
    disk_format: str
    compressed: bool
    points: tuple[str, ...]


@dataclass(frozen=True)
class _Points:
    """A disk's servable points, and the first missing file that ends them."""

    points: tuple[PointInTime, ...]
    missing: str
    unreachable: tuple[str, ...]


def read_meta(path: Path) -> StreamMeta:
    """The meta frame of a stream file, without indexing the frames."""
    try:
        with open(path, "rb") as f:
            header = f.read(frames.HEADER_SIZE)
            kind, _, length = frames.decode_header(header, str(path), 0)
            if kind != frames.META or length > _MAX_META:
                raise StreamFormatError(str(path), 0, "stream does not start with a meta frame")
            payload = f.read(length)
    except FileNotFoundError:
        raise ChainError(f"missing file in the chain: {path}") from None
    if len(payload) != length:
        raise StreamFormatError(str(path), frames.HEADER_SIZE, "file ends inside the meta JSON")
    try:
        obj = json.loads(payload.decode("utf-8"))
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return StreamMeta.from_dict(obj)
    except (ValueError, KeyError, TypeError) as err:
        raise StreamFormatError(str(path), frames.HEADER_SIZE, f"bad meta JSON: {err}") from None


def parse_data_name(path: Path) -> DataFile | None:
    """Classify a file by name; None when it is not a finished data file."""
    m = _DATA_NAME.match(path.name)
    if m is None:
        return None
    if m["level"]:
        return DataFile(path, m["disk"], m["level"], "")
    if m["cp"]:
        return DataFile(path, m["disk"], INC, m["cp"])
    return DataFile(path, m["disk"], DIFF, m["ts"])


PENDING_NAME: Final = ".vbbackup-pending"


@dataclass(frozen=True)
class PendingRun:
    """The commit record of a backup run that has not finished (or was killed).

    Written before the job starts, removed when the run commits (``DOMAIN.cpt``
    for full/inc, the record's own removal for diff/copy). While it exists the
    data files it lists are not part of the set.
    """

    level: str
    checkpoint: str | None
    files: tuple[str, ...]

    def to_json(self) -> bytes:
        return json.dumps(
            {"level": self.level, "checkpoint": self.checkpoint, "files": list(self.files)}
        ).encode()


def read_pending(directory: Path) -> PendingRun | None:
    """The directory's commit record; an unreadable one counts as none (and is reported)."""
    try:
        record = json.loads((directory / PENDING_NAME).read_bytes().decode("utf-8"))
        files = tuple(str(f) for f in record["files"])
        checkpoint = record.get("checkpoint")
        return PendingRun(str(record["level"]), str(checkpoint) if checkpoint else None, files)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ChainError(f"{directory / PENDING_NAME}: unreadable commit record: {err}") from None


def disk_problem(meta: StreamMeta, disk: str) -> str | None:
    """A stream under disk ``disk``'s name whose meta names another disk."""
    if meta.disk_name and meta.disk_name != disk:
        return f"meta names disk {meta.disk_name!r}, file name {disk!r}"
    return None


def link_problems(meta: StreamMeta, disk: str, checkpoint: str, parent: str | None) -> list[str]:
    """The chain rules for one member: what is wrong with a stream as ``checkpoint`` of
    ``disk``'s chain after ``parent`` (None: the full). The one home of these rules: the
    reader refuses on the first, ``verify`` and ``info`` report them all."""
    problems = [p for p in (disk_problem(meta, disk),) if p]
    if meta.checkpoint_name != checkpoint:
        problems.append(f"is checkpoint {meta.checkpoint_name!r}, the chain expects {checkpoint!r}")
    if parent is None and meta.parent_checkpoint:
        problems.append(f"a full backup whose meta names a parent ({meta.parent_checkpoint!r})")
    elif parent is not None and meta.parent_checkpoint != parent:
        problems.append(
            f"broken parent link: parent is {meta.parent_checkpoint!r}, expected {parent!r}"
        )
    return problems


def no_data_files(directory: Path) -> str:
    """The message for a directory without data files, naming a backup that did not finish."""
    partials = sorted(p.name for p in directory.glob(f"*.data{PARTIAL_SUFFIX}"))
    if partials:
        return (
            f"no finished backup data files in {directory}: {', '.join(partials)} "
            "is what a backup that did not finish left (run the backup again)"
        )
    return f"no backup data files (*.data) in {directory}"


def read_checkpoint_list(path: Path) -> tuple[str, ...]:
    """A ``DOMAIN.cpt`` file: the one parser of it (every problem a ``ChainError``)."""
    try:
        names = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ChainError(f"cannot read {path}: {err.strerror}") from None
    except ValueError as err:  # UnicodeDecodeError is one
        raise ChainError(f"{path}: bad checkpoint list: {err}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ChainError(f"{path}: checkpoint list is not a JSON array of names")
    return tuple(names)


def start_at_full(names: list[str], full: StreamMeta | None) -> list[str]:
    """Drop the checkpoints a consolidated full (``vbbackup consolidate``) merged.

    ``.cpt`` keeps every name so that the next checkpoint is numbered on;
    the chain starts at the full's checkpoint.
    """
    if full and full.checkpoint_name in names[1:]:
        return names[names.index(full.checkpoint_name) :]
    return names


def follow_parents(first: str, children: dict[str | None, str]) -> list[str]:
    """Chain order from the metas alone (no ``.cpt``): ``first``, then each checkpoint's
    child by ``parentCheckpoint``, as far as the links go (a loop ends it)."""
    names = [first]
    while names[-1] in children and len(names) <= len(children):
        names.append(children[names[-1]])
    return names


class BackupSet:
    """The data files and checkpoint list of one backup directory.

    Scanning reads names and the ``.cpt`` file only; metas are read (once)
    when a disk's points are asked for.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            if self.directory.exists():
                raise ChainError(f"not a directory: {self.directory}")
            raise ChainError(f"backup directory does not exist: {self.directory}")
        self._files: dict[str, list[DataFile]] = {}
        self.pending = read_pending(self.directory)
        uncommitted = set(self.pending.files) if self.pending else set()
        for entry in sorted(self.directory.iterdir()):
            data = parse_data_name(entry)
            if data is not None and entry.is_file() and entry.name not in uncommitted:
                self._files.setdefault(data.disk, []).append(data)
        if not self._files:
            raise ChainError(no_data_files(self.directory))
        self.checkpoints: tuple[str, ...] | None = self._read_cpt()
        self._metas: dict[Path, StreamMeta] = {}
        self._points: dict[str, _Points] = {}

    @property
    def disks(self) -> tuple[str, ...]:
        return tuple(sorted(self._files))

    def files(self, disk: str) -> tuple[DataFile, ...]:
        """Every data file of a disk in the directory (verify walks these)."""
        return tuple(self._files[self.check_disk(disk)])

    def check_disk(self, disk: str | None) -> str:
        """The disk's name; None is fine when the set holds exactly one disk."""
        if disk is None:
            if len(self._files) > 1:
                raise ChainError(
                    f"{self.directory} holds several disks ({', '.join(self.disks)}): "
                    "choose one (--disk NAME; the nbdkit plugin: disk=NAME)"
                )
            return self.disks[0]
        if disk not in self._files:
            raise ChainError(
                f"unknown disk {disk!r} in {self.directory} (disks: {', '.join(self.disks)})"
            )
        return disk

    def meta(self, data: DataFile) -> StreamMeta:
        meta = self._metas.get(data.path)
        if meta is None:
            meta = self._metas[data.path] = read_meta(data.path)
        return meta

    def disk_info(self, disk: str | None = None) -> DiskInfo:
        name = self.check_disk(disk)
        points = self.points(name)
        latest = points[-1].meta
        return DiskInfo(
            name=name,
            virtual_size=latest.virtual_size,
            disk_format=latest.disk_format,
            compressed=latest.is_compressed,
            points=tuple(p.name for p in points),
        )

    def qemu_info(self, point: PointInTime) -> dict[str, Any] | None:
        """``qemu-img info`` JSON saved with the point's newest file, if any."""
        path = self.directory / f"{point.disk}.{point.side_ident}.qcow.json"
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise ChainError(f"{path}: bad JSON: {err}") from None
        return info if isinstance(info, dict) else None

    def points(self, disk: str | None = None) -> tuple[PointInTime, ...]:
        """Every servable state of a disk, oldest first (checkpoints and diffs)."""
        return self._state(self.check_disk(disk)).points

    def _state(self, disk: str) -> _Points:
        state = self._points.get(disk)
        if state is None:
            state = self._points[disk] = self._resolve_points(disk)
        return state

    def resolve(
        self,
        disk: str | None = None,
        until: str | None = None,
        files: Sequence[str | os.PathLike[str]] | None = None,
    ) -> PointInTime:
        """The point to serve: ``until`` (default: newest), or explicit ``files``."""
        if files is not None:
            if until is not None:
                raise ChainError("give either until= or file=, not both")
            return self._explicit(files)
        name = self.check_disk(disk)
        state = self._state(name)
        known = ", ".join(p.name for p in state.points)
        if state.missing and (until is None or until in state.unreachable):
            raise ChainError(
                f"missing file in the chain: {state.missing}; "
                f"the points before it can still be read ({known})"
            )
        if until is None:
            return state.points[-1]
        for point in state.points:
            if until in (point.name, point.files[-1].name):
                return point
        same_run = self._same_run_diff(name, until, state.points)
        if same_run is not None:
            return same_run
        copies = [p for p in state.points if p.name == COPY]
        if copies and len(copies) == len(state.points) and self._is_set_point(until):
            # a --raw disk (no bitmaps) has one copy, taken by the chain's full: every point
            # of the chain serves it, as restore restores it
            return copies[-1]
        raise ChainError(f"unknown checkpoint {until!r} for disk {name} (chain: {known})")

    def _same_run_diff(
        self, name: str, until: str, mine: tuple[PointInTime, ...]
    ) -> PointInTime | None:
        """This disk's differential of the run that made another disk's ``diff.<T>``.

        virtnbdbackup names a differential after the second its disk's file was begun, so
        the disks of one run can differ by a second or two (``vda.diff.1796185591``,
        ``vdb.diff.1796185590``). Each run writes one differential per disk: the k-th of one
        disk is the k-th of every other, if their times are that close.
        """
        if not until.startswith("diff.") or not until[5:].isdigit():
            return None
        diffs = [p for p in mine if p.name.startswith("diff.") and p.name[5:].isdigit()]
        for other in self.disks:
            if other == name:
                continue
            try:
                points = self._state(other).points
            except ChainError:
                continue  # that disk's own problem; this one may still match another
            theirs = [p.name for p in points if p.name.startswith("diff.")]
            if until in theirs and len(theirs) == len(diffs):
                candidate = diffs[theirs.index(until)]
                if abs(int(candidate.name[5:]) - int(until[5:])) <= SAME_RUN_SECONDS:
                    return candidate
        return None

    def _is_set_point(self, until: str) -> bool:
        """A checkpoint or differential of the set (of any disk)."""
        if until in (self.checkpoints or ()):
            return True
        return any(
            f.level == DIFF and f"diff.{f.ident}" == until
            for fs in self._files.values()
            for f in fs
        )

    def _read_cpt(self) -> tuple[str, ...] | None:
        cpts = sorted(self.directory.glob("*.cpt"))
        if not cpts:
            return None
        if len(cpts) > 1:
            names = ", ".join(p.name for p in cpts)
            raise ChainError(f"{self.directory} holds several checkpoint lists ({names})")
        return read_checkpoint_list(cpts[0])

    def _chain_names(self, disk: str, by_level: dict[str, list[DataFile]]) -> list[str]:
        """Checkpoint names in chain order: the .cpt list, else the metas' links."""
        if self.checkpoints is not None:
            return list(self.checkpoints)
        fulls = by_level.get(FULL, [])
        if not fulls:
            return []
        children = {self.meta(f).parent_checkpoint: f.ident for f in by_level.get(INC, [])}
        return follow_parents(self.meta(fulls[0]).checkpoint_name, children)

    def _resolve_points(self, disk: str) -> _Points:
        by_level: dict[str, list[DataFile]] = {}
        for data in self._files[disk]:
            by_level.setdefault(data.level, []).append(data)
        incs = {f.ident: f for f in by_level.get(INC, [])}
        fulls = by_level.get(FULL, [])
        diffs: dict[str, list[DataFile]] = {}
        for diff in sorted(by_level.get(DIFF, []), key=lambda f: int(f.ident)):
            diffs.setdefault(self.meta(diff).parent_checkpoint or "", []).append(diff)
        points = [PointInTime(COPY, disk, (f,), (self.meta(f),)) for f in by_level.get(COPY, [])]
        chain: list[DataFile] = []
        full_meta = self.meta(fulls[0]) if fulls else None
        names = start_at_full(self._chain_names(disk, by_level), full_meta)
        if not fulls and not incs and not diffs:
            names = []  # a --raw disk saved as a copy only: the .cpt is not its chain
        missing = ""
        for k, cp in enumerate(names):
            found = (fulls[0] if fulls else None) if k == 0 else incs.get(cp)
            if found is None:
                level = FULL if k == 0 else f"inc.{cp}"
                missing = f"{self.directory / f'{disk}.{level}.data'} (checkpoint {cp})"
                break
            data = found
            meta = self.meta(data)
            self._check_link(data, meta, cp, self.meta(chain[-1]) if chain else None)
            chain.append(data)
            base = PointInTime(cp, disk, tuple(chain), tuple(self.meta(f) for f in chain))
            points.append(base)
            for diff in diffs.pop(cp, []):
                points.append(
                    PointInTime(
                        f"diff.{diff.ident}",
                        disk,
                        base.files + (diff,),
                        base.metas + (self.meta(diff),),
                    )
                )
        for parent, orphans in diffs.items():
            if parent in names:  # its parent lies beyond the missing file
                continue
            raise ChainError(
                f"chain does not link: {orphans[0].path} has parent checkpoint {parent!r}, "
                f"which is not in the chain of {disk} ({', '.join(names) or 'empty'})"
            )
        if not points:
            raise ChainError(
                f"no full or copy backup of disk {disk} in {self.directory}"
                + (f" (missing {missing})" if missing else "")
            )
        unreachable = tuple(names[len(chain) :])
        return _Points(tuple(points), missing, unreachable)

    def _check_link(
        self, data: DataFile, meta: StreamMeta, cp: str, parent: StreamMeta | None
    ) -> None:
        problems = link_problems(meta, data.disk, cp, parent.checkpoint_name if parent else None)
        if problems:
            raise ChainError(f"chain does not link: {data.path}: {problems[0]}")

    def _explicit(self, names: Sequence[str | os.PathLike[str]]) -> PointInTime:
        if not names:
            raise ChainError("file= lists no files")
        files: list[DataFile] = []
        metas: list[StreamMeta] = []
        for name in names:
            path = self.directory / name
            if not path.is_file():
                raise ChainError(f"missing file in the chain: {path}")
            data = parse_data_name(path) or DataFile(path, "", FULL, "")
            meta = self.meta(data)
            bases = [m for f, m in zip(files, metas, strict=True) if f.level != DIFF]
            last = bases[-1] if bases else None
            if last is None and meta.parent_checkpoint:
                raise ChainError(
                    f"{path} is incremental (parent {meta.parent_checkpoint!r}): "
                    "the first file must be a full or copy backup"
                )
            if last is not None and meta.parent_checkpoint != last.checkpoint_name:
                raise ChainError(
                    f"chain does not link: {path} has parent {meta.parent_checkpoint!r}, "
                    f"expected {last.checkpoint_name!r}"
                )
            files.append(data)
            metas.append(meta)
        return PointInTime(files[-1].name, files[-1].disk, tuple(files), tuple(metas))
