"""consolidate: a synthetic full that every later checkpoint reads the same through.

The fast tier runs on synthetic sets (tests/chain/chains.py); the integration
tier on sets made by Debian's virtnbdbackup, restored by its virtnbdrestore.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.chain.chains import write_chain, write_stream
from tests.harness.compare import assert_identical
from tests.harness.crash import Crash, dying_at
from tests.harness.fixtures import own_vm
from tests.harness.vm import DiskSpec, TestVM
from tests.integration.vnb_sets import (
    VNB_247,
    MiB,
    apply_ops,
    default_steps,
    make_virtnbdbackup_chain,
    run_virtnbdbackup,
    run_virtnbdrestore,
)
from vbbackup.chain import BackupSet, open_view, read_meta
from vbbackup.cli import main
from vbbackup.engine import consolidate as consolidate_mod
from vbbackup.engine.consolidate import ConsolidateConfig, consolidate, plan
from vbbackup.engine.verify import VerifyConfig, verify
from vbbackup.errors import ChainError, StreamFormatError
from vbbackup.fsutil import file_adler32, read_checksum

SIZE = 1 << 20


def _steps() -> list[list]:
    return [
        [(0, b"\x11" * 8192), (8192, SIZE - 8192)],  # full: data + zero frames
        [(4096, b"\x22" * 4096), (100_000, b"\x23" * 5000)],
        [(0, 4096), (200_000, b"\x33" * 70_000)],  # a trim and new data
        [(4096, b"\x44" * 100), (SIZE - 4096, b"\x45" * 4096)],
        [(300_000, b"\x55" * 3000)],
    ]


def _data_files(directory: Path) -> list[Path]:
    """The set's data files; ``vda.merged.*.data`` are virtnbdbackup 2.47's placeholders."""
    return [p for p in directory.glob("*.data") if ".merged." not in p.name]


def _hashes(directory: Path) -> dict[str, str]:
    """sha256 of every servable point, read through the chain view."""
    out = {}
    for point in BackupSet(directory).points():
        with open_view(directory, until=point.name) as view:
            out[point.name] = hashlib.sha256(view.read(0, view.size)).hexdigest()
    return out


@pytest.fixture(params=[False, True], ids=["plain", "lz4"])
def chain(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    write_chain(tmp_path / "set", SIZE, _steps(), compressed=request.param)
    return tmp_path / "set"


def test_every_later_checkpoint_reads_the_same(chain: Path) -> None:
    before = _hashes(chain)
    cpt = (chain / "vm.cpt").read_text()
    lines: list[str] = []
    consolidate(ConsolidateConfig(chain, until="virtnbdbackup.2"), lines.append)
    after = _hashes(chain)
    assert list(after) == ["virtnbdbackup.2", "virtnbdbackup.3", "virtnbdbackup.4"]
    assert after == {k: v for k, v in before.items() if k in after}
    assert (chain / "vm.cpt").read_text() == cpt  # numbering of the next inc goes on
    assert sorted(p.name for p in _data_files(chain)) == [
        "vda.full.data",
        "vda.inc.virtnbdbackup.3.data",
        "vda.inc.virtnbdbackup.4.data",
    ]
    assert not list(chain.glob("*.partial"))
    meta = read_meta(chain / "vda.full.data")
    assert (meta.checkpoint_name, meta.parent_checkpoint, meta.incremental) == (
        "virtnbdbackup.2",
        None,
        False,
    )
    assert read_checksum(chain / "vda.full.data") == file_adler32(chain / "vda.full.data")
    assert lines[0] == "vda: merging vda.full.data and 2 incrementals up to virtnbdbackup.2"
    report = verify(VerifyConfig(chain))
    assert report.sound
    assert {f.sums for f in report.files} == {"ok"}  # the synthetic full has its .sums


def test_damaged_input_is_never_merged(chain: Path) -> None:
    before = {p.name: p.read_bytes() for p in chain.iterdir() if p.is_file()}
    inc = chain / "vda.inc.virtnbdbackup.2.data"
    data = bytearray(before[inc.name])
    data[data.index(b"\x33" * 64) if b"\x33" * 64 in data else -300] ^= 0x01
    inc.write_bytes(bytes(data))
    with pytest.raises(StreamFormatError, match=r"vda\.inc\.virtnbdbackup\.2\.data: at byte \d+"):
        consolidate(ConsolidateConfig(chain, until="virtnbdbackup.3"), lambda _: None)
    after = {p.name: p.read_bytes() for p in chain.iterdir() if p.is_file()}
    assert after.keys() == before.keys()  # nothing merged, nothing removed, no partial
    assert all(after[n] == before[n] for n in after if n != inc.name)


def test_default_merges_the_whole_chain(chain: Path) -> None:
    before = _hashes(chain)
    consolidate(ConsolidateConfig(chain), lambda _: None)
    assert _hashes(chain) == {"virtnbdbackup.4": before["virtnbdbackup.4"]}
    assert [p.name for p in _data_files(chain)] == ["vda.full.data"]
    # the view's holes stay holes: the synthetic full is as sparse as the chain
    with open_view(chain) as view:
        assert sum(n for _, n, zero in view.extents(0, SIZE) if not zero) < 100_000


def test_new_full_is_older_than_the_incrementals(chain: Path) -> None:
    """virtnbdrestore orders a disk's files by mtime: the full must come first."""
    os.utime(chain / "vda.full.data", (1_000_000, 1_000_000))
    consolidate(ConsolidateConfig(chain, until="virtnbdbackup.1"), lambda _: None)
    assert (chain / "vda.full.data").stat().st_mtime == 1_000_000


def test_nothing_to_merge_at_the_full(chain: Path) -> None:
    lines: list[str] = []
    consolidate(ConsolidateConfig(chain, until="virtnbdbackup.0"), lines.append)
    assert lines == ["vda: already a full at virtnbdbackup.0, nothing to merge"]
    assert len(list(_data_files(chain))) == 5


def test_crash_after_the_swap_still_restores_and_rerun_finishes(chain: Path) -> None:
    before = _hashes(chain)
    (item,) = plan(ConsolidateConfig(chain, until="virtnbdbackup.3"))
    consolidate_mod._write_full(item)  # steps 1-2 done, crash before any removal
    later = {k: before[k] for k in ("virtnbdbackup.3", "virtnbdbackup.4")}
    assert _hashes(chain) == later
    # crash in step 3 after the oldest merged incremental went: a suffix is left
    (chain / "vda.inc.virtnbdbackup.1.data").unlink()
    assert _hashes(chain) == later
    lines: list[str] = []
    consolidate(ConsolidateConfig(chain, until="virtnbdbackup.3"), lines.append)
    assert "vda: removed vda.inc.virtnbdbackup.2.data" in lines
    assert "vda: removed vda.inc.virtnbdbackup.3.data" in lines
    assert _hashes(chain) == later
    assert len(list(_data_files(chain))) == 2


def test_crash_while_writing_leaves_a_partial_that_is_ignored(chain: Path) -> None:
    before = _hashes(chain)
    (chain / "vda.full.data.partial").write_bytes(b"half a stream")
    assert _hashes(chain) == before
    consolidate(ConsolidateConfig(chain, until="virtnbdbackup.2"), lambda _: None)
    assert not (chain / "vda.full.data.partial").exists()
    assert _hashes(chain)["virtnbdbackup.4"] == before["virtnbdbackup.4"]


def test_unknown_checkpoint_is_refused(chain: Path) -> None:
    with pytest.raises(ChainError, match=r"unknown checkpoint 'virtnbdbackup\.9' for disk vda"):
        consolidate(ConsolidateConfig(chain, until="virtnbdbackup.9"), lambda _: None)


def test_differential_on_a_merged_checkpoint_is_refused(chain: Path) -> None:
    write_stream(
        chain / "vda.diff.1764140000.data",
        SIZE,
        [(0, b"\x99" * 4096)],
        checkpoint="virtnbdbackup.2",
        parent="virtnbdbackup.1",
    )
    with pytest.raises(ChainError, match=r"differential on checkpoint virtnbdbackup\.1"):
        consolidate(ConsolidateConfig(chain, until="virtnbdbackup.3"), lambda _: None)
    assert len(list(_data_files(chain))) == 6  # nothing touched
    consolidate(ConsolidateConfig(chain, until="virtnbdbackup.1"), lambda _: None)
    assert "diff.1764140000" in _hashes(chain)


def test_two_disks_are_consolidated_together(tmp_path: Path) -> None:
    write_chain(tmp_path, SIZE, _steps(), disk="vda")
    write_chain(tmp_path, SIZE, _steps()[::-1][:3], disk="vdb")
    before = {d: _hashes_disk(tmp_path, d) for d in ("vda", "vdb")}
    consolidate(ConsolidateConfig(tmp_path, until="virtnbdbackup.2"), lambda _: None)
    for disk in ("vda", "vdb"):
        after = _hashes_disk(tmp_path, disk)
        assert after == {k: v for k, v in before[disk].items() if k in after}
        assert "virtnbdbackup.2" in after


def _hashes_disk(directory: Path, disk: str) -> dict[str, str]:
    out = {}
    for point in BackupSet(directory).points(disk):
        with open_view(directory, disk=disk, until=point.name) as view:
            out[point.name] = hashlib.sha256(view.read(0, view.size)).hexdigest()
    return out


def test_cli_consolidate(chain: Path) -> None:
    result = CliRunner().invoke(main, ["consolidate", str(chain), "--until", "virtnbdbackup.3"])
    assert result.exit_code == 0, result.output
    assert "vda: vda.full.data now holds checkpoint virtnbdbackup.3" in result.output


# -- the real stack: virtnbdbackup makes the set, virtnbdrestore restores it ---------------

VM_SIZE = 16 * MiB


@pytest.fixture(scope="module")
def vnb_vm() -> Iterator[TestVM]:
    with own_vm([DiskSpec(size=VM_SIZE)], "virtnbdbackup") as vm:
        yield vm


def _virtnbdrestore(
    directory: Path, out: Path, until: str | None = None, tool: str = "virtnbdrestore"
) -> Path:
    run_virtnbdrestore(directory, out, *(["--until", until] if until else []), tool=tool)
    (image,) = [p for p in out.iterdir() if p.name.startswith("vda")]
    return image


@pytest.mark.integration
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "lz4"])
def test_virtnbdrestore_restores_the_consolidated_set(
    vnb_vm: TestVM, tmp_path: Path, compress: bool
) -> None:
    steps = default_steps(VM_SIZE) + [[("write", 5 * MiB, MiB, 0x77)]]
    points = dict(
        make_virtnbdbackup_chain(vnb_vm, tmp_path / "set", compress=compress, writes_per_step=steps)
    )
    backup = tmp_path / "set"
    result = CliRunner().invoke(main, ["consolidate", str(backup), "--until", "virtnbdbackup.2"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in BackupSet(backup).points()] == ["virtnbdbackup.2", "virtnbdbackup.3"]
    for name in ("virtnbdbackup.2", "virtnbdbackup.3"):
        for tool in ("virtnbdrestore", str(VNB_247 / "virtnbdrestore")):  # 1.9.15 and 2.47
            out = tmp_path / f"restore-{name}-{len(tool)}"
            out.mkdir()
            assert_identical(_virtnbdrestore(backup, out, name, tool), points[name])
        with open_view(backup, until=name) as view:
            assert view.read(0, view.size) == points[name].read_bytes(), name
    assert verify(VerifyConfig(backup)).sound

    # the next inc continues the chain (virtnbdbackup numbers by the .cpt list)
    apply_ops(vnb_vm, "vda", [("write", 7 * MiB, 4096, 0x88)])
    run_virtnbdbackup(vnb_vm, backup, "inc", compress=compress)
    expected = vnb_vm.expected("vda")
    assert json.loads(next(backup.glob("*.cpt")).read_text())[-1] == "virtnbdbackup.4"
    with open_view(backup, until="virtnbdbackup.4") as view:
        assert view.read(0, view.size) == expected.read_bytes()
    out = tmp_path / "restore-last"
    out.mkdir()
    assert_identical(_virtnbdrestore(backup, out), expected)


@pytest.mark.integration
def test_virtnbdrestore_restores_a_set_crashed_after_the_swap(
    vnb_vm: TestVM, tmp_path: Path
) -> None:
    """The merged incrementals still there (crash in step 3): replaying them is harmless."""
    steps = default_steps(VM_SIZE)
    points = make_virtnbdbackup_chain(
        vnb_vm, tmp_path / "set", compress=False, writes_per_step=steps
    )
    backup = tmp_path / "set"
    (item,) = plan(ConsolidateConfig(backup, until="virtnbdbackup.1"))
    consolidate_mod._write_full(item)
    shutil.copytree(backup, tmp_path / "crashed")
    out = tmp_path / "restore"
    out.mkdir()
    assert_identical(_virtnbdrestore(tmp_path / "crashed", out), points[-1][1])


@pytest.mark.integration
def test_our_next_inc_continues_a_consolidated_chain(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.harness.backup import chain_names
    from vbbackup.engine.backup import BackupConfig, run_backup

    vm: TestVM = make_vm(disks=[DiskSpec("vda", VM_SIZE)])
    out = tmp_path / "chain"
    expected = {}
    for k, level in enumerate(["full", "inc", "inc"]):
        vm.write_pattern("vda", k * MiB + 4096 * k, MiB, 0x10 + k)
        result = run_backup(BackupConfig(domain=vm.name, level=level, output=out, compress=2))
        expected[result.checkpoint] = vm.expected("vda")
    consolidate(ConsolidateConfig(out), lambda _: None)
    names = chain_names(out)
    assert sorted(p.name for p in out.glob("*.data")) == [
        "vda.full.data",
        *(f"vda.merged.{n}.data" for n in names[1:]),  # 2.47's placeholders
    ]
    vm.discard("vda", 0, MiB)
    vm.write_pattern("vda", 9 * MiB, 4096, 0x99)
    result = run_backup(BackupConfig(domain=vm.name, level="inc", output=out, compress=2))
    names = chain_names(out)
    assert result.checkpoint == names[-1] and names[-1].endswith(".3")
    expected[result.checkpoint] = vm.expected("vda")
    for name in names[-2:]:
        with open_view(out, until=name) as view:
            assert view.read(0, view.size) == expected[name].read_bytes(), name
    assert verify(VerifyConfig(out)).sound


def test_killed_right_after_the_swap_the_rerun_writes_the_checks(chain: Path) -> None:
    """The swap happened, the new full's .chksum and .sums did not: the rerun writes them."""
    before = _hashes(chain)
    (item,) = plan(ConsolidateConfig(chain, until="virtnbdbackup.2"))
    consolidate_mod._write_full(item)
    full = chain / "vda.full.data"
    for side in (".chksum", ".sums"):  # as if killed between the rename and these
        (chain / f"vda.full.data{side}").unlink()
    report = verify(VerifyConfig(chain))
    assert report.sound, report.problems  # nothing misleading: only "unchecked" warnings
    lines: list[str] = []
    consolidate(ConsolidateConfig(chain, until="virtnbdbackup.2"), lines.append)
    assert "vda: removed vda.inc.virtnbdbackup.1.data" in lines
    assert "vda: wrote the missing vda.full.data.chksum and .sums" in lines
    assert read_checksum(full) == file_adler32(full)
    report = verify(VerifyConfig(chain))
    assert report.sound and report.warnings == []
    assert {f.sums for f in report.files} == {"ok"}
    assert _hashes(chain) == {k: v for k, v in before.items() if k in _hashes(chain)}


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "lz4"])
def test_killed_at_every_step_restores_and_the_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    """A crash before each rename and removal in turn: every later point reads the same,
    verify finds no problem, and the next consolidate completes the job."""
    origin = tmp_path / "origin"
    write_chain(origin, SIZE, _steps(), compressed=compressed)
    before = _hashes(origin)
    later = {k: v for k, v in before.items() if k in ("virtnbdbackup.2", "virtnbdbackup.3",
                                                        "virtnbdbackup.4")}  # fmt: skip
    step = 0
    while True:
        chain = tmp_path / f"run{step}"
        shutil.copytree(origin, chain)
        try:
            with dying_at(monkeypatch, step):
                consolidate(ConsolidateConfig(chain, until="virtnbdbackup.2"), lambda _: None)
            finished = True
        except Crash:
            finished = False
        assert {k: v for k, v in _hashes(chain).items() if k in later} == later, step
        assert verify(VerifyConfig(chain)).problems == [], step
        consolidate(ConsolidateConfig(chain, until="virtnbdbackup.2"), lambda _: None)
        assert _hashes(chain) == later, step
        report = verify(VerifyConfig(chain))
        assert report.sound and not report.warnings, (step, report.warnings)
        full = chain / "vda.full.data"
        assert read_checksum(full) == file_adler32(full), step
        assert not list(chain.glob("*.partial")), step
        if finished:
            break
        step += 1
    assert step > 8  # every rename and removal of the run was a crash point once
