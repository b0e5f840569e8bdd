"""``vbbackup verify``: is every byte of a backup set still what the backup wrote?

Per data file, in this order::

    adler32 of the whole file   vs  <file>.chksum        (any flipped byte)
    frame headers and trailer   read_index                (structure, with position)
    meta dataSize, frame tiling                           (flipped offsets/lengths)
    every lz4 frame decoded     block + content checksums (compressed payloads)
    every piece of decoded data vs  <file>.sums          (names file, frame and disk offset)
    frame layout and meta       vs  <file>.sums

and for the set: the chain links (see ``survey``). Without a ``.chksum``
file (virtnbdbackup 1.9.15 writes none) a flipped byte inside an
uncompressed payload or the meta JSON cannot be seen: verify says so in a
warning instead of calling the file sound.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vbbackup.chain import COPY, DIFF, FULL, INC
from vbbackup.engine.lock import directory_lock
from vbbackup.engine.survey import FileEntry, Problem, Survey, survey
from vbbackup.errors import ChainError, StreamFormatError, VbError
from vbbackup.format import HEADER_SIZE, KIND_DATA, PayloadReader, StreamIndex, read_index
from vbbackup.fsutil import read_checksum, read_sums, sums_path, write_sums

Progress = Callable[[int], None]
_READ = 4 * 1024 * 1024
_MAX_PROBLEMS_PER_FILE = 20


@dataclass(frozen=True)
class VerifyConfig:
    directory: Path
    until: str | None = None


@dataclass(frozen=True)
class FileResult:
    """Outcome for one data file; ``checksum`` (the whole-file adler32) and ``sums``
    (the per-piece checksums) are each "ok", "mismatch" or "none"."""

    path: Path
    size: int
    checksum: str
    problems: tuple[Problem, ...]
    sums: str = "none"

    @property
    def sound(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    directory: Path
    files: list[FileResult] = field(default_factory=list)
    chain_problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Problem]:
        return self.chain_problems + [p for f in self.files for p in f.problems]

    @property
    def sound(self) -> bool:
        return not self.problems


def verify(config: VerifyConfig, progress: Progress | None = None) -> VerifyReport:
    """Check the set (or the files up to ``until``); never raises for damage found."""
    found = survey(config.directory)
    entries, wanted = _select(found, config.until)
    report = VerifyReport(found.directory, warnings=list(found.warnings))
    report.chain_problems = [
        p for p in found.problems if wanted is None or p.path in wanted or p.path.is_dir()
    ]
    for entry in entries:
        result = verify_file(entry.path, progress)
        report.files.append(result)
        if result.checksum == "none" and result.sums == "none":
            report.warnings.append(_no_checksum_warning(entry))
    return report


def planned_bytes(config: VerifyConfig) -> int:
    """How many bytes ``verify`` will read, for a progress bar (an estimate)."""
    entries, _ = _select(survey(config.directory), config.until)
    total = 0
    return total


def verify_file(path: Path, progress: Progress | None = None) -> FileResult:
    """Every check of one data file; problems carry the byte position where known."""
    problems: list[Problem] = []
    size = path.stat().st_size
    checksum = "none"
    try:
        stored = read_checksum(path)
    except VbError as err:
        problems.append(Problem(path, str(err)))
        stored = None
    if stored is not None:
        actual = _adler32(path, progress)
        checksum = "ok" if actual == stored else "mismatch"
        if actual != stored:
            problems.append(
                Problem(
                    path,
                    f"adler32 {actual} does not match {path.name}.chksum ({stored}): "
                    "the file changed after the backup wrote it",
                )
            )
    sums = "none"
    try:
        with open(path, "rb") as f:
            index = read_index(f, str(path))
            problems += _check_layout(index, path)
            reader = PayloadReader(f, index, cache_chunks=0)
            sums, found = _check_sums(path, reader, progress)
            problems += found
            if index.compressed and sums == "none":
                problems += _decode_all(reader, progress)
    except StreamFormatError as err:
        problems.append(Problem(Path(err.path), err.detail, err.position))
    except OSError as err:
        problems.append(Problem(path, f"cannot read: {err.strerror}"))
    return FileResult(path, size, checksum, tuple(problems[:_MAX_PROBLEMS_PER_FILE]), sums)


def _check_sums(
    path: Path, reader: PayloadReader, progress: Progress | None
) -> tuple[str, list[Problem]]:
    """Every piece of decoded data against ``<file>.sums`` (lz4 checks come with decoding)."""
    try:
        sums = read_sums(path)
        if sums is None:
            return "none", []
        checker = reader.checker(sums, str(sums_path(path)))
    except StreamFormatError as err:
        return "mismatch", [Problem(Path(err.path), err.detail, err.position)]
    damaged = reader.damaged_pieces(checker, _MAX_PROBLEMS_PER_FILE)
    if progress is not None:
        progress(path.stat().st_size)
    problems = [Problem(Path(e.path), e.detail, e.position) for e in damaged]
    return ("mismatch" if problems else "ok"), problems


@dataclass(frozen=True)
class AddSumsResult:
    added: list[Path]
    present: list[Path]
    refused: list[Problem]
    unchecked: list[Path]  # no .chksum: the sums record the file as it is now


def add_sums(directory: Path) -> AddSumsResult:
    """``verify --add-sums``: side files for the data files without one, after a sound check.

    A file is given sums only when every check ``verify`` can make passes: its
    ``.chksum`` where there is one, its structure, and its lz4 frames.
    """
    with directory_lock(directory, "adding checksums to it"):
        return _add_sums(directory)


def _add_sums(directory: Path) -> AddSumsResult:
    found = survey(directory)
    result = AddSumsResult([], [], [], [])
    for entry in found.files():
        if sums_path(entry.path).exists():
            result.present.append(entry.path)
            continue
        checked = verify_file(entry.path)
        if not checked.sound:
            result.refused.extend(checked.problems)
            continue
        with open(entry.path, "rb") as f:
            reader = PayloadReader(f, read_index(f, str(entry.path)), cache_chunks=0)
            sums = reader.compute_sums(entry.path.name)
        write_sums(entry.path, sums)
        result.added.append(entry.path)
        if checked.checksum == "none":
            result.unchecked.append(entry.path)
    return result


def _adler32(path: Path, progress: Progress | None) -> int:
    value = 1
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            value = zlib.adler32(chunk, value)
            if progress is not None:
                progress(len(chunk))
    return value


def _check_layout(index: StreamIndex, path: Path) -> list[Problem]:
    """dataSize matches the frames; a full or copy stream tiles the disk; nothing overlaps."""
    problems = []
    meta = index.meta
    if meta.data_size != index.data_size:
        problems.append(
            Problem(
                path,
                f"meta says dataSize {meta.data_size}, the data frames hold {index.data_size}",
                HEADER_SIZE,
            )
        )
    order = sorted(range(len(index)), key=lambda i: index.starts[i])
    whole = not meta.incremental
    end = 0
    for i in order:
        start, length, pos = index.starts[i], index.lengths[i], index.positions[i]
        if start < end:
            message = f"frame [{start}, +{length}) overlaps an earlier frame"
            problems.append(Problem(path, message, pos))
        elif whole and start > end:
            message = f"gap [{end}, {start}) before this frame: a full stream covers the disk"
            problems.append(Problem(path, message, pos))
        end = max(end, start + length)
    if whole and end != meta.virtual_size and not problems:
        message = f"frames end at {end}, the disk is {meta.virtual_size} bytes"
        problems.append(Problem(path, message, index.file_size))
    return problems


def _decode_all(reader: PayloadReader, progress: Progress | None) -> list[Problem]:
    """Decode every lz4 frame (lz4 checks block and content checksums)."""
    index = reader.index
    problems = []
    for i in range(len(index)):
        if index.kinds[i] != KIND_DATA:
            continue
        try:
            for _ in reader.iter_chunks(i):
                pass
        except StreamFormatError as err:
            problems.append(Problem(Path(index.name), err.detail, err.position))
            if len(problems) >= _MAX_PROBLEMS_PER_FILE:
                break
        if progress is not None:
            progress(index.payload_size[i] + HEADER_SIZE + 2)
    return problems


def _no_checksum_warning(entry: FileEntry) -> str:
    if entry.meta is not None and entry.meta.is_compressed:
        what = "lz4 checks the payloads, but a flipped byte in the meta or a frame offset"
    else:
        what = "a flipped byte inside a data payload, the meta or a frame offset"
    return f"{entry.path}: no checksum file: {what} cannot be detected"


def _select(found: Survey, until: str | None) -> tuple[list[FileEntry], set[Path] | None]:
    """The files to check, and (with ``until``) the paths whose problems matter."""
    if until is None:
        return found.files(), None
    entries: list[FileEntry] = []
    wanted: set[Path] = set()
    hit = False
    for disk, files in sorted(found.disks.items()):
        chosen = _files_until(found, disk, files, until)
        if chosen is None:
            continue
        hit = True
        entries += chosen[0]
        wanted |= chosen[1]
    if not hit:
        raise ChainError(f"unknown checkpoint {until!r} in {found.directory}")
    return entries, wanted


def _files_until(
    found: Survey, disk: str, files: list[FileEntry], until: str
) -> tuple[list[FileEntry], set[Path]] | None:
    """Files (present) and paths (expected) of one disk's chain up to ``until``."""
    names = list(found.checkpoints or [e.checkpoint for e in files if e.data.level in (FULL, INC)])
    target = next((e for e in files if until in (e.path.name, e.checkpoint)), None)
    if target is not None and target.data.level == COPY:
        return [target], {target.path}
    base: str | None = until
    if target is not None and target.data.level == DIFF:
        base = target.meta.parent_checkpoint if target.meta else None
    if base not in names:
        return None
    k = names.index(base)
    paths = {found.directory / f"{disk}.full.data"}
    paths |= {found.directory / f"{disk}.inc.{name}.data" for name in names[1 : k + 1]}
    if target is not None and target.data.level == DIFF:
        paths.add(target.path)
    return [e for e in files if e.path in paths], paths
