"""Backup directory -> chain of a disk -> point-in-time view.

``open_view(directory, disk=None, until=None, files=None)`` is the entry
point; ``BackupSet`` lists disks, points and data files without opening
them. See the "chain" contract in ``docs/architecture.md``.
"""

from vbbackup.chain.backupset import (
    COPY,
    DIFF,
    FULL,
    INC,
    BackupSet,
    DataFile,
    DiskInfo,
    PointInTime,
    read_meta,
)
from vbbackup.chain.extentmap import ZERO, ExtentMap
from vbbackup.chain.view import PointInTimeView, open_view, unchecked_warnings

__all__ = [
    "COPY",
    "DIFF",
    "FULL",
    "INC",
    "ZERO",
    "BackupSet",
    "DataFile",
    "DiskInfo",
    "ExtentMap",
    "PointInTime",
    "PointInTimeView",
    "open_view",
    "unchecked_warnings",
    "read_meta",
]
