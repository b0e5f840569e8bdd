"""A libvirt pull-mode backup job on a test VM, always ended on the way out.

    with pull_backup(vm, checkpoint="cp0") as job:          # full, creates checkpoint cp0
        job.socket           # /var/tmp/vbtest-.../backup-1.sock (NBD over a unix socket)
        job.exports["vda"]   # export name of disk vda ("vda")
        job.bitmaps["vda"]   # "qemu:dirty-bitmap:backup-vda" (incremental jobs only)
    with pull_backup(vm, checkpoint="cp1", incremental="cp0") as job:
        ...                  # the bitmap context holds what changed since cp0

libvirt's defaults are kept: the export of a disk is named after its target, and
an incremental job exports the dirty bitmap as ``backup-<target>``. Disks left out
of `disks` get ``backup='no'``; they and raw disks get ``checkpoint='no'``. The job
and checkpoint XML are vbbackup's own (``vbbackup.virt``), so are the job's end.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.harness.vm import TestVM
from vbbackup.virt.checkpoints import checkpoint_xml
from vbbackup.virt.job import backup_xml
from vbbackup.virt.job import end_job as end_backup_job

_jobs = itertools.count(1)


@dataclass(frozen=True)
class PullBackupJob:
    socket: Path
    exports: dict[str, str]
    bitmaps: dict[str, str]
    checkpoint: str | None
    incremental: str | None

    def nbd_uri(self, target: str) -> str:
        return f"nbd+unix:///{self.exports[target]}?socket={self.socket}"


@contextmanager
def pull_backup(
    vm: TestVM,
    disks: Sequence[str] | None = None,
    checkpoint: str | None = None,
    incremental: str | None = None,
) -> Iterator[PullBackupJob]:
    """Start a pull backup of `disks` (default: all of the VM's disks) and end it on exit.

    checkpoint: name of a checkpoint the job creates (bitmaps start at this moment).
    incremental: an earlier checkpoint; the job then exports its dirty bitmaps.
    The NBD socket and the scratch files live in the VM's directory.
    """
    if vm.dom is None:
        raise RuntimeError(f"{vm.name} is not running")
    targets = list(disks) if disks is not None else vm.targets
    skip = [t for t in vm.targets if t not in targets]
    n = next(_jobs)
    socket = vm.dir / f"backup-{n}.sock"
    scratch = {t: vm.dir / f"backup-{n}.{t}.scratch" for t in targets}
    # Only qcow2 can hold a bitmap: raw disks are backed up but left out of the checkpoint.
    bitmap_targets = [t for t in targets if vm.disk_format(t) == "qcow2"]
    no_bitmap = [t for t in vm.targets if t not in bitmap_targets]
    cp_xml = checkpoint_xml(checkpoint, bitmap_targets, no_bitmap) if checkpoint else None
    vm.dom.backupBegin(backup_xml(socket, scratch, skip, incremental), cp_xml)
    try:
        yield PullBackupJob(
            socket=socket,
            exports={t: t for t in targets},
            bitmaps={t: f"qemu:dirty-bitmap:backup-{t}" for t in targets} if incremental else {},
            checkpoint=checkpoint,
            incremental=incremental,
        )
    finally:
        end_backup_job(vm.dom)
        socket.unlink(missing_ok=True)
        for path in scratch.values():
            path.unlink(missing_ok=True)


def chain_names(directory: Path) -> list[str]:
    """The checkpoint names of the chain in ``directory`` (they carry the chain's id)."""
    cpt = next(directory.glob("*.cpt"))
    return list(json.loads(cpt.read_text()))


def cp(directory: Path, n: int) -> str:
    """Checkpoint ``n`` of the chain in ``directory``."""
    return chain_names(directory)[n]
