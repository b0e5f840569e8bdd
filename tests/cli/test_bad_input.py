"""Bad input on a real domain: one line, the right exit code, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.test_ops_backup import run
from tests.harness.vm import DiskSpec, MiB

pytestmark = pytest.mark.integration


def test_refused_runs_leave_no_directory_and_no_log(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    new = tmp_path / "new"
    code, text = run("full", vm.name, "-o", str(new), "--estimate")
    assert code == 2, text
    assert not new.exists()
    code, text = run("inc", vm.name, "-o", str(new), "--no-progress")
    assert code == 4, text
    assert not new.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, text = run("inc", vm.name, "-o", str(empty), "--no-progress")
    assert code == 4, text
    assert text.splitlines()[-1].startswith(f"vbbackup: error: no full backup in {empty}")
    assert list(empty.iterdir()) == []


def test_a_checkpoint_list_that_is_not_utf8(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    out = tmp_path / "set"
    assert run("full", vm.name, "-o", str(out), "--no-progress")[0] == 0
    (out / f"{vm.name}.cpt").write_bytes(b'["\xff\xfe"]')
    code, text = run("inc", vm.name, "-o", str(out), "--no-progress")
    assert code == 4, text
    assert text.splitlines()[-1].startswith(f"vbbackup: error: {out}/{vm.name}.cpt: bad checkpoint")
    assert "Traceback" not in text


def test_define_with_a_name_that_exists_writes_nothing(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    out = tmp_path / "set"
    assert run("full", vm.name, "-o", str(out), "--no-progress")[0] == 0
    target = tmp_path / "restored"
    code, text = run("restore", str(out), "-o", str(target), "--define", "--name", vm.name)
    assert code == 5, text
    assert text.splitlines()[-1] == (
        f"vbbackup: error: a domain named {vm.name!r} exists already; --define needs a new "
        "name (--name)"
    )
    assert not target.exists() or list(target.iterdir()) == []
