"""One writer of a set or a restore target at a time; the second is refused with the pid."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.chain.chains import write_chain
from vbbackup.engine.consolidate import ConsolidateConfig, consolidate
from vbbackup.engine.lock import directory_lock
from vbbackup.engine.restore import RestoreConfig, restore
from vbbackup.engine.verify import add_sums
from vbbackup.errors import BackupBusyError

SIZE = 256 * 1024


def _set(directory: Path) -> Path:
    steps = [[(0, b"a" * 4096), (4096, SIZE - 4096)], [(4096, b"b" * 4096)]]
    write_chain(directory, SIZE, steps, sums=False)
    return directory


def test_a_second_writer_of_a_set_is_refused(tmp_path: Path) -> None:
    backup = _set(tmp_path / "set")
    busy = f"another vbbackup run (pid {os.getpid()}) is writing {backup}; wait for it to finish"
    with directory_lock(backup, "backing up into it"):
        with pytest.raises(BackupBusyError, match=re.escape(f"{busy} before consolidating it")):
            consolidate(ConsolidateConfig(backup), lambda _: None)
        with pytest.raises(
            BackupBusyError, match=re.escape(f"{busy} before adding checksums to it")
        ):
            add_sums(backup)
    assert add_sums(Path(str(backup) + "/")).added  # the same directory, spelled otherwise


def test_a_second_restore_into_one_target_is_refused(tmp_path: Path) -> None:
    backup = _set(tmp_path / "set")
    target = tmp_path / "out"
    with directory_lock(target, "restoring into it"), pytest.raises(BackupBusyError):
        restore(RestoreConfig(backup, target, fmt="raw"))
    assert not target.exists()
