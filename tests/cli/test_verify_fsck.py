"""``verify --fsck``: every guest file system of a point checked read-only in a libguestfs
appliance; a damaged one named, the set never written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.harness.backup import chain_names
from tests.harness.fixtures import require
from tests.harness.vm import DiskSpec
from vbbackup.cli import main

MiB = 1024 * 1024
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner(mix_stderr=False).invoke(main, list(args), prog_name="vbbackup")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def ext4_image(path: Path, files: Path) -> int:
    """An ext4 file system of 16 MiB made from ``files``; the byte offset of its root
    directory's block (damaging it is what e2fsck must find)."""
    subprocess.run(["truncate", "-s", str(16 * MiB), str(path)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "vbfsck", "-d", str(files),
                    str(path)], check=True)  # fmt: skip
    done = subprocess.run(["debugfs", "-R", "bmap / 0", str(path)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return int(done.stdout.strip()) * 4096


def test_fsck_finds_the_damaged_point_and_passes_the_sound_one(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    require("guestfs")
    files = tmp_path / "files"
    files.mkdir()
    (files / "hello.txt").write_text("hello\n")
    root_block = ext4_image(tmp_path / "ext4.raw", files)
    subprocess.run(["truncate", "-s", str(8 * MiB), str(tmp_path / "vfat.raw")], check=True)
    subprocess.run(["mkfs.vfat", "-n", "VBFAT", str(tmp_path / "vfat.raw")], check=True,
                   capture_output=True)  # fmt: skip
    vm = make_vm([DiskSpec("vda", None, image=tmp_path / "ext4.raw"),
                  DiskSpec("vdb", None, image=tmp_path / "vfat.raw")])  # fmt: skip
    out = tmp_path / "set"
    assert run("full", vm.name, "-o", str(out), "--no-progress")[0] == 0
    vm.write("vda", root_block, b"\xff" * 4096)  # the root directory is garbage now
    assert run("inc", vm.name, "-o", str(out), "--no-progress")[0] == 0
    good, damaged = chain_names(out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    code, text, err = run("verify", str(out), "--fsck", "--until", good)
    assert code == 0, err + text  # text: each file system's result and the checker's line
    assert text.splitlines() == [
        f"clean   {good}  vda /dev/sda ext4",
        f"clean   {good}  vdb /dev/sdb vfat",
    ]
    code, text, err = run("verify", str(out), "--fsck", "--all", "--json")
    assert code == 9
    report = json.loads(text)
    assert report["passed"] is False
    by = {(f["point"], f["disk"]): f for f in report["filesystems"]}
    assert by[(good, "vda")]["result"] == "clean", by[(good, "vda")]
    assert by[(damaged, "vdb")]["result"] == "clean"
    bad = by[(damaged, "vda")]
    assert bad["result"] == "errors", bad
    assert bad["detail"].startswith("e2fsck -fn: exit ") and "has errors" in bad["detail"], bad
    assert err.strip().splitlines()[-1] == (
        f"vbbackup: error: 1 file system(s) of {out} have errors: {damaged} /dev/sda"
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
