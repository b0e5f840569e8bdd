"""Never silently wrong: chains of one VM side by side, reused checkpoint names, holes.

Each test drives the real stack (libvirtd, QEMU's backup jobs) through the CLI
and compares every point of every set with the harness's expected images.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.engine.test_ops_backup import _reads_as, run
from tests.harness.backup import chain_names, cp
from tests.harness.vm import DiskSpec, MiB, TestVM
from tests.integration.vnb_sets import run_virtnbdbackup

pytestmark = pytest.mark.integration


def _vm(make_vm) -> TestVM:  # type: ignore[no-untyped-def]
    return make_vm(disks=[DiskSpec("vda", 16 * MiB)])


def _ok(*args: str) -> str:
    code, text = run(*args, "--no-progress")
    assert code == 0, text
    return text


def test_monthly_directories_and_two_chains_continue_in_turn(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """docs/backup.md's monthly layout, and a daily set beside it: each chain stays exact."""
    vm = _vm(make_vm)
    nov, dec = tmp_path / "2026-11", tmp_path / "2026-12"
    expected: dict[tuple[Path, int], Path] = {}
    copies = tmp_path / "expected"
    copies.mkdir()

    def snapshot(directory: Path) -> None:
        k = len(chain_names(directory)) - 1
        copy = copies / f"{directory.name}.{k}.raw"
        shutil.copyfile(vm.expected("vda"), copy)
        expected[(directory, k)] = copy

    vm.write_pattern("vda", 0, MiB, 0x11)
    _ok("auto", vm.name, "-o", str(nov))
    snapshot(nov)
    vm.write_pattern("vda", 2 * MiB, MiB, 0x22)
    _ok("auto", vm.name, "-o", str(nov))
    snapshot(nov)
    vm.write_pattern("vda", 4 * MiB, MiB, 0x33)  # between the two fulls
    _ok("auto", vm.name, "-o", str(dec))
    snapshot(dec)
    vm.write_pattern("vda", 6 * MiB, MiB, 0x44)
    _ok("inc", vm.name, "-o", str(nov))  # the old chain goes on, with its own bitmap
    snapshot(nov)
    vm.write_pattern("vda", 8 * MiB, MiB, 0x55)
    _ok("inc", vm.name, "-o", str(dec))
    snapshot(dec)
    vm.discard("vda", 0, MiB)
    _ok("inc", vm.name, "-o", str(nov))
    snapshot(nov)

    for (directory, k), image in expected.items():
        assert _reads_as(directory, cp(directory, k), image), (directory.name, k)
    names = sorted(c.getName() for c in vm.dom.listAllCheckpoints())
    assert names == sorted([*chain_names(nov), *chain_names(dec)])
    assert {n.rsplit(".", 1)[0] for n in chain_names(nov)} != {
        n.rsplit(".", 1)[0] for n in chain_names(dec)
    }
    code, text = run("check", vm.name, "-o", str(nov))
    assert code == 0, text
    assert "consistent: no problems found" in text
    nov_chain, dec_chain = chain_names(nov)[0][:-2], chain_names(dec)[0][:-2]
    listed = sorted([f"{nov_chain} (4 checkpoints)", f"{dec_chain} (2 checkpoints)"])
    (line,) = [x for x in text.splitlines() if x.startswith(f"chains of {vm.name}: ")]
    assert sorted(line.split(": ", 1)[1].split(", ")) == listed


def test_a_reused_checkpoint_name_is_never_continued(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """virtnbdbackup's names are the same in every chain: its second chain reuses them."""
    vm = _vm(make_vm)
    nov, dec = tmp_path / "2026-11", tmp_path / "2026-12"
    vm.write_pattern("vda", 0, MiB, 0x11)
    run_virtnbdbackup(vm, nov, "full", compress=False)
    vm.write_pattern("vda", 2 * MiB, MiB, 0x22)
    run_virtnbdbackup(vm, nov, "inc", compress=False)
    vm.write_pattern("vda", 4 * MiB, MiB, 0x33)
    run_virtnbdbackup(vm, dec, "full", compress=False)  # deletes and recreates virtnbdbackup.*
    vm.write_pattern("vda", 6 * MiB, MiB, 0x44)
    run_virtnbdbackup(vm, dec, "inc", compress=False)  # a new virtnbdbackup.1
    vm.write_pattern("vda", 8 * MiB, MiB, 0x55)
    expected = vm.expected("vda")
    before = sorted(p.name for p in nov.iterdir())

    code, text = run("inc", vm.name, "-o", str(nov), "--estimate")
    assert code == 4, text
    assert text.splitlines()[-1].endswith("would miss changes; nothing to estimate")
    code, text = run("inc", vm.name, "-o", str(nov), "--no-fallback", "--no-progress")
    assert code == 4, text
    assert text.splitlines()[-1].startswith(
        "vbbackup: error: libvirt's checkpoint virtnbdbackup.1 (created "
    )
    assert "is not the one this set recorded (created " in text
    assert "another chain reused the name; an incremental from it would miss changes" in text
    assert sorted(p.name for p in nov.iterdir() if p.suffix != ".log") == [
        n for n in before if not n.endswith(".log")
    ]

    code, text = run("check", vm.name, "-o", str(nov))
    assert code != 0, text
    assert "problem: libvirt's checkpoint virtnbdbackup.1 (created " in text
    assert f"    fix: vbbackup full {vm.name} -o NEW_DIR" in text
    code, text = run("inc", vm.name, "-o", str(nov), "--no-progress")
    assert code == 0, text
    fallback = tmp_path / "2026-11.1"
    (warning,) = [line for line in text.splitlines() if line.startswith("warning: libvirt's")]
    assert warning.endswith(f"falling back to a full backup into a new chain: {fallback}")
    assert _reads_as(fallback, cp(fallback, 0), expected)
    assert not list(nov.glob("vda.inc.virtnbdbackup.2*"))


def test_a_chain_with_a_hole_is_never_extended(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    out = tmp_path / "set"
    for k in range(3):
        vm.write_pattern("vda", k * MiB, MiB, 0x10 + k)
        _ok("auto", vm.name, "-o", str(out))
    missing = out / f"vda.inc.{cp(out, 1)}.data"
    kept = tmp_path / "kept.data"
    shutil.move(missing, kept)
    data_files = sorted(p.name for p in out.glob("*.data"))
    vm.write_pattern("vda", 5 * MiB, MiB, 0x20)
    for level in ("inc", "diff", "auto"):
        code, text = run(level, vm.name, "-o", str(out), "--no-progress")
        assert code == 4, text
        assert text.splitlines()[-1] == (
            f"vbbackup: error: cannot extend the chain in {out}: missing file in the chain: "
            f"{missing} (checkpoint {cp(out, 1)}); the points before it can still be read "
            f"({cp(out, 0)}); start a new chain with `vbbackup full {vm.name} -o NEW_DIR`"
        )
    assert len(chain_names(out)) == 3
    assert sorted(p.name for p in out.glob("*.data")) == data_files
    assert not list(out.glob("*.partial"))
    # a damaged newest file is refused the same way, naming the file
    shutil.move(kept, missing)
    newest = out / f"vda.inc.{cp(out, 2)}.data"
    data = bytearray(newest.read_bytes())
    data[60] ^= 0x20  # inside the meta JSON: the layout no longer matches the .sums
    newest.write_bytes(bytes(data))
    code, text = run("inc", vm.name, "-o", str(out), "--no-progress")
    assert code == 4, text
    assert text.splitlines()[-1].startswith(
        f"vbbackup: error: cannot extend the chain in {out}: {newest}: at byte "
    )
    newest.write_bytes(bytes(data[:60]) + bytes([data[60] ^ 0x20]) + bytes(data[61:]))
    _ok("inc", vm.name, "-o", str(out))  # mended: the chain goes on
    assert _reads_as(out, cp(out, 3), vm.expected("vda"))


def test_prune_deletes_the_removed_chains_checkpoints(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Old chains' bitmaps cost every guest write: prune -c drops them with the directory."""
    vm = _vm(make_vm)
    root = tmp_path / "vm"
    for month in ("2026-10", "2026-11", "2026-12"):
        vm.write_pattern("vda", 0, MiB, 0x30)
        _ok("auto", vm.name, "-o", str(root / month))
    kept = chain_names(root / "2026-12")
    dropped = chain_names(root / "2026-10") + chain_names(root / "2026-11")
    code, text = run("prune", str(root), "--keep-chains", "1", "-c", "qemu:///system")
    assert code == 0, text
    assert f"deleted the checkpoints of 2026-10 from {vm.name}: {dropped[0]}" in text
    assert sorted(c.getName() for c in vm.dom.listAllCheckpoints()) == kept
    assert sorted(p.name for p in root.iterdir()) == ["2026-12"]
