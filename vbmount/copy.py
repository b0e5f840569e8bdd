"""``vbmount copy``: one disk at a point in time to a new sparse image (restore's engine)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vbbackup.engine.copyout import Export, copy_out


@dataclass(frozen=True)
class CopyConfig:
    directory: Path
    output: Path
    disk: str | None = None
    until: str | None = None
    fmt: str = "qcow2"
    force: bool = False


def copy_disk(config: CopyConfig) -> None:
    copy_out(
        Export(config.directory, config.disk, config.until),
        config.output,
        config.fmt,
        overwrite=config.force,
    )
