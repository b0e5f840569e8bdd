"""What a backup run takes and gives: its config, its results, what it reports, a disk's plan."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vbbackup.engine.backup_ops import (
    BackupOptions,
    Estimate,
)
from vbbackup.engine.backupset import COPY, DIFF, FULL, INC
from vbbackup.virt import (
    DomainDisk,
)

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
    warnings: list[str] = field(default_factory=list)  # --strict: exit 2 when there are any

    def to_dict(self) -> dict[str, Any]:
        result = asdict(self)
        if self.estimate is not None:
            result["estimate"]["bytes"] = self.estimate.total
        return result


class Reporter:
    """What a run tells its user; the CLI overrides these (thread-safe there)."""

    def __init__(self) -> None:
        self.warnings: list[str] = []  # what --strict turns into exit code 2

    def info(self, message: str) -> None:
        log.info(message)

    def warn(self, message: str) -> None:
        """Something the admin should act on although the run goes on (or succeeded)."""
        self.warnings.append(message)
        log.warning(message)
        self.say_warning(f"warning: {message}")

    def say_warning(self, line: str) -> None:
        pass

    def disk_started(self, target: str, total: int) -> None:
        pass

    def disk_progress(self, target: str, done: int) -> None:
        pass

    def disk_done(self, result: DiskResult) -> None:
        pass


@dataclass(frozen=True)
class DiskPlan:
    disk: DomainDisk
    level: str  # FULL, INC, DIFF or COPY (raw disks in a full run: COPY)
    path: Path
    incremental: bool
    checkpoint: str
    parent: str | None
