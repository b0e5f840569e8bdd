"""The output-directory side of a backup: file names, ``.cpt``, side files, leftovers.

One directory holds one chain (see FORMAT-FACTS / docs/format.md)::

    DOMAIN.cpt                         ["virtnbdbackup.0", "virtnbdbackup.1"]
    checkpoints/virtnbdbackup.1.xml    checkpoint XML (to redefine lost checkpoints)
    vmconfig.virtnbdbackup.1.xml       domain XML of that backup
    vda.virtnbdbackup.1.qcow.json      qemu-img info of the image
    vda.full.data, vda.inc.virtnbdbackup.1.data, vda.diff.1764140000.data, vda.copy.data
    backup.inc.2026-11-26T07-00-00.log

``DOMAIN.cpt`` is written last: a checkpoint is part of the chain only once
every disk's stream of it is complete.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from vbbackup.chain.backupset import PENDING_NAME, PendingRun, read_checkpoint_list, read_pending
from vbbackup.errors import TargetExistsError, VbError
from vbbackup.format.sums import SUMS_SUFFIX
from vbbackup.fsutil import PARTIAL_SUFFIX, fsync_dir, write_small_file

FULL, INC, DIFF, COPY = "full", "inc", "diff", "copy"


class BackupDir:
    """Names and side files of one domain's backup directory."""

    def __init__(self, path: Path, domain: str, checkpoint_dir: Path | None = None) -> None:
        self.path = path
        self.domain = domain
        self.checkpoint_dir = checkpoint_dir or path / "checkpoints"
        self.cpt_path = path / f"{domain}.cpt"

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise VbError(f"cannot create output directory {self.path}: {err.strerror}") from None
        probe = self.path / ".vbbackup-write-test"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise VbError(f"cannot write to output directory {self.path}: {err.strerror}") from None

    # -- the chain ----------------------------------------------------------------------

    def checkpoints(self) -> list[str]:
        """The chain's checkpoint names from ``DOMAIN.cpt``; [] when there is none."""
        if not self.cpt_path.exists():
            return []
        return list(read_checkpoint_list(self.cpt_path))

    def write_checkpoints(self, names: list[str]) -> None:
        write_small_file(self.cpt_path, json.dumps(names).encode())
        self.clear_pending()

    # -- the run's commit record (chain.backupset.PendingRun) --------------------------

    def mark_pending(self, run: PendingRun) -> None:
        """Before the job creates a checkpoint or a file: a killed run can be undone."""
        write_small_file(self.path / PENDING_NAME, run.to_json())

    def pending(self) -> PendingRun | None:
        return read_pending(self.path)

    def clear_pending(self) -> None:
        """The commit of a diff or copy (full and inc commit with ``DOMAIN.cpt``)."""
        try:
            (self.path / PENDING_NAME).unlink()
        except FileNotFoundError:
            return
        fsync_dir(self.path)

    # -- file names ---------------------------------------------------------------------

    def data_path(self, disk: str, level: str, ident: str) -> Path:
        """``vda.full.data``, ``vda.inc.<cp>.data``, ``vda.diff.<time>.data``, ``vda.copy.data``."""
        if level == INC:
            return self.path / f"{disk}.inc.{ident}.data"
        if level == DIFF:
            return self.path / f"{disk}.diff.{ident}.data"
        return self.path / f"{disk}.{level}.data"

    def diff_ident(self, now: int) -> str:
        """The diff's time stamp: ``now``, or a later second when a diff of ``now`` exists
        (two diffs within one second must not collide; a leftover of a dead run neither)."""
        while (
            any(self.path.glob(f"*.diff.{now}.data*"))
            or (self.path / f"vmconfig.{now}.xml").exists()
        ):
            now += 1
        return str(now)

    def data_files(self) -> list[Path]:
        """Complete stream files (``*.data``; partials end in ``.partial``)."""
        return sorted(self.path.glob("*.data"))

    def partial_files(self) -> list[Path]:
        return sorted(self.path.glob(f"*{PARTIAL_SUFFIX}"))

    def remove(self, paths: list[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            for side in (".chksum", SUMS_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    path.with_name(path.name + side).unlink()

    def log_path(self, level: str, stamp: str) -> Path:
        return self.path / f"backup.{level}.{stamp}.log"

    # -- side files ---------------------------------------------------------------------

    def save_checkpoint_xml(self, name: str, xml: str) -> None:
        write_small_file(self.checkpoint_dir / f"{name}.xml", xml.encode())

    def checkpoint_xml(self, name: str) -> str | None:
        try:
            return (self.checkpoint_dir / f"{name}.xml").read_text()
        except FileNotFoundError:
            return None

    def save_consistency(self, ident: str, record: dict[str, Any]) -> None:
        """``consistency.<ident>.json``: frozen by the guest agent (where, thawed) or why not."""
        write_small_file(self.path / f"consistency.{ident}.json", json.dumps(record).encode())

    def save_domain_state(self, ident: str, state: dict[str, Any]) -> None:
        """``domain.<ident>.json``: autostart, the guest's OS as its agent said, vTPMs."""
        write_small_file(self.path / f"domain.{ident}.json", json.dumps(state).encode())

    def save_vmconfig(self, ident: str, xml: str) -> None:
        write_small_file(self.path / f"vmconfig.{ident}.xml", xml.encode())

    def save_image_info(self, disk: str, ident: str, info: dict[str, Any]) -> None:
        write_small_file(
            self.path / f"{disk}.{ident}.qcow.json", json.dumps(info, indent=4).encode()
        )

    # -- preconditions ------------------------------------------------------------------

    def check_new_chain(self) -> None:
        """A full backup starts a chain: refuse a directory that holds one already."""
        if self.cpt_path.exists():
            raise TargetExistsError(
                f"{self.path} already holds a backup chain ({self.cpt_path.name}); "
                "a full backup starts a new chain: use a new directory "
                f"(e.g. -o {self.path}/NEW) or `inc`"
            )
        stray = [p.name for p in self.data_files() if not p.name.endswith(".copy.data")]
        if stray:
            raise TargetExistsError(
                f"{self.path} holds {stray[0]} but no {self.cpt_path.name}: an earlier "
                "full backup did not finish; remove those files or use a new directory"
            )
