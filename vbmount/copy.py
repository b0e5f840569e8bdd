"""``vbmount copy``: one disk at a point in time to a new sparse image (restore's engine)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vbbackup.engine.copyout import Export, copy_out
from vbbackup.errors import UsageError


@dataclass(frozen=True)
class CopyConfig:
    directory: Path
    output: Path
    disk: str | None = None
    until: str | None = None
    fmt: str = "qcow2"
    force: bool = False
    sequence: tuple[str, ...] | None = None


def copy_disk(config: CopyConfig) -> None:
    if config.sequence and config.until:
        raise UsageError("give --until or --sequence, not both")
    copy_out(
        Export(config.directory, config.disk, config.until, config.sequence),
        config.output,
        config.fmt,
        overwrite=config.force,
    )
