"""``vbbackup verify --fsck``: every guest file system of a point checked, without booting.

The checks run in the libguestfs appliance (vbbackup.gfs) on a throwaway overlay
of the served point: a checker that replays a journal or repairs writes into
that overlay only, never into the set. A frozen or crash-consistent backup of a
mounted file system holds a journal to replay, as the guest's own boot would:
it is replayed first (a mount and unmount in the overlay), then the checker runs
in its no-change mode (``e2fsck -fn``, ``xfs_repair -n``, ``fsck.vfat -n``,
``btrfs check --readonly``, ``ntfsfix -n``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vbbackup.chain import BackupSet
from vbbackup.errors import UsageError
from vbbackup.gfs import OpenPoint, open_point
from vbbackup.nbdio.proc import last_line

SKIPPED_TYPES = {"swap", "unknown", "LVM2_member", "crypto_LUKS", ""}


@dataclass(frozen=True)
class FsResult:
    """One file system of a point: ``clean``, ``errors`` or ``skipped`` (and why)."""

    point: str
    disk: str
    device: str
    fstype: str
    result: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chosen_points(backup: BackupSet, until: str | None, all_points: bool) -> list[str]:
    """The points to boot: ``--all`` (oldest first), ``--until``, or the newest."""
    if all_points and until:
        raise UsageError("give --until CHECKPOINT or --all, not both")
    points = backup.points(backup.disks[0])
    if all_points:
        return [p.name for p in points]
    return [backup.resolve(backup.disks[0], until).name]


def fsck_point(directory: Path, point: str, say: Callable[[str], None]) -> list[FsResult]:
    """Check every file system libguestfs finds on the point's disks (one appliance)."""
    with open_point(directory, point, say) as opened:
        found = opened.g.list_filesystems()
        return [_check(opened, point, device, fstype) for device, fstype in sorted(found.items())]


# read-only checkers run in the appliance (``debug sh``: libguestfs wraps only the
# repairing modes of most of them); exit status 0 means clean
NO_CHANGE = {
    "ext2": "e2fsck -fn", "ext3": "e2fsck -fn", "ext4": "e2fsck -fn",
    "vfat": "fsck.vfat -n", "btrfs": "btrfs check --readonly", "ntfs": "ntfsfix -n",
}  # fmt: skip
JOURNALLED = ("ext3", "ext4", "xfs")


def _check(opened: OpenPoint, point: str, device: str, fstype: str) -> FsResult:
    disk = opened.disk_of(device) or "-"
    g = opened.g

    def result(state: str, detail: str = "") -> FsResult:
        return FsResult(point, disk, device, fstype, state, detail)

    if fstype in SKIPPED_TYPES:
        return result("skipped", f"no file system to check ({fstype or 'none'})")
    if fstype not in NO_CHANGE and fstype != "xfs":
        return result("skipped", f"no read-only checker for {fstype}")
    try:
        if fstype in JOURNALLED:
            _replay_journal(g, device)
        if fstype == "xfs":
            status = int(g.xfs_repair(device, nomodify=True))
            return result("clean") if status == 0 else result("errors", f"xfs_repair -n: {status}")
        out = str(g.debug("sh", [f"{NO_CHANGE[fstype]} {device} 2>&1; echo status=$?"]))
    except RuntimeError as err:
        return result("errors", last_line(str(err)))
    text, _, code = out.rpartition("status=")
    if code.strip() == "0":
        return result("clean")
    return result("errors", f"{NO_CHANGE[fstype]}: exit {code.strip()}: {last_line(text)}")


def _replay_journal(g: Any, device: str) -> None:
    """Mount and unmount (in the throwaway overlay) as the guest's boot would: what the
    journal holds is applied, so the read-only check sees the file system as it mounts."""
    g.mount(device, "/")
    g.umount_all()
