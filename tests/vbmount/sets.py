"""Backup sets written from disk images (no VM): a full plus incrementals, virtnbdbackup names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tests.chain.chains import write_chain
from tests.vbmount.images import changed_frames


def write_set(directory: Path, versions: Sequence[Path], disk: str = "vda") -> list[str]:
    """versions[0] as the full backup, each later image as an incremental; checkpoint names."""
    steps = [
        changed_frames(image, versions[k - 1] if k else None) for k, image in enumerate(versions)
    ]
    return write_chain(directory, versions[0].stat().st_size, steps, disk=disk)
