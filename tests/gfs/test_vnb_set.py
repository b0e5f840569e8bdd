"""``vbmount get`` from a set virtnbdbackup (Debian's 1.9.15) wrote: full + compressed inc."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.harness.fixtures import require
from tests.harness.gfs_images import changed_ranges
from tests.harness.vm import DiskSpec
from tests.integration.vnb_sets import run_virtnbdbackup
from vbmount.cli import main as vbmount_main

MiB = 1024 * 1024
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def ext4_with(path: Path, files: dict[str, str], tmp: Path) -> Path:
    tree = tmp / f"{path.stem}-tree"
    tree.mkdir()
    for name, text in files.items():
        (tree / name).write_text(text)
    subprocess.run(["truncate", "-s", str(32 * MiB), str(path)], check=True)
    uuid = "8e0f2a52-2b1c-4e36-9d4c-0123456789ab"  # one file system, two versions
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", uuid, "-d", str(tree), str(path)], check=True)
    return path


def test_get_each_point_of_a_virtnbdbackup_made_set(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require("guestfs", "virtnbdbackup")
    old = ext4_with(tmp_path / "old.raw", {"note.txt": "first\n"}, tmp_path)
    new = ext4_with(tmp_path / "new.raw", {"note.txt": "second\n", "added.txt": "+\n"}, tmp_path)
    vm = make_vm([DiskSpec("vda", None, image=old)])
    out = tmp_path / "vnb"
    run_virtnbdbackup(vm, out, "full", compress=False)
    for offset, data in changed_ranges(old, new):
        vm.write("vda", offset, data)
    run_virtnbdbackup(vm, out, "inc", compress=True)
    for point, note in (("virtnbdbackup.0", "first\n"), ("virtnbdbackup.1", "second\n")):
        dest = tmp_path / point
        result = CliRunner(mix_stderr=False).invoke(
            vbmount_main, ["get", str(out), "--until", point, "/dev/sda:/", "-o", str(dest)]
        )
        assert result.exit_code == 0, result.stderr
        assert (dest / "note.txt").read_text() == note
        assert (dest / "added.txt").exists() == (point == "virtnbdbackup.1")
