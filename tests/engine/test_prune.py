"""prune: whole chain directories go, oldest full first; nothing else is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.harness.crash import Crash, dying_at
from vbbackup.cli import main
from vbbackup.engine.prune import PruneConfig, prune
from vbbackup.errors import UsageError
from vbbackup.format import StreamMeta, StreamWriter


def _stream(path: Path, date: str, checkpoint: str, parent: str | None) -> None:
    meta = StreamMeta(
        virtual_size=1 << 20,
        data_size=4096,
        date=date,
        disk_name="vda",
        disk_format="qcow2",
        checkpoint_name=checkpoint,
        parent_checkpoint=parent,
        incremental=parent is not None,
        compressed=False,
    )
    with open(path, "wb") as f:
        writer = StreamWriter(f, meta)
        writer.write_data(0, b"x" * 4096)
        writer.finish()


def make_chain(root: Path, name: str, date: str, incs: int = 1) -> Path:
    chain = root / name
    chain.mkdir()
    names = [f"virtnbdbackup.{k}" for k in range(incs + 1)]
    (chain / "vm.cpt").write_text(json.dumps(names))
    _stream(chain / "vda.full.data", date, names[0], None)
    for k in range(1, incs + 1):
        _stream(chain / f"vda.inc.{names[k]}.data", date, names[k], names[k - 1])
    (chain / "checkpoints").mkdir()
    (chain / "checkpoints" / f"{names[0]}.xml").write_text("<domaincheckpoint/>")
    return chain


@pytest.fixture
def root(tmp_path: Path) -> Path:
    # names sort the other way round than the dates: prune must go by the metas
    make_chain(tmp_path, "a", "2026-11-20T10:00:00")
    make_chain(tmp_path, "b", "2026-11-10T10:00:00", incs=3)
    make_chain(tmp_path, "c", "2026-11-01T10:00:00")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a chain")
    (tmp_path / "half").mkdir()  # a full without .cpt is not a chain: left alone
    _stream(tmp_path / "half" / "vda.full.data", "2020-01-01T00:00:00", "x", None)
    return tmp_path


def test_keeps_newest_chains_by_full_date(root: Path) -> None:
    lines: list[str] = []
    result = prune(PruneConfig(root, keep_chains=2), lines.append)
    assert [c.path.name for c in result.removed] == ["c"]
    assert [c.path.name for c in result.kept] == ["b", "a"]
    assert sorted(p.name for p in root.iterdir()) == ["a", "b", "half", "notes"]
    assert lines[0].startswith(f"removing {root / 'c'} (full of 2026-11-01 10:00:00, 4 files,")
    assert lines[1].startswith(f"keeping {root / 'b'} ")
    # the kept chains are complete, middle included
    assert len(list((root / "b").glob("vda.inc.*.data"))) == 3


def test_dry_run_removes_nothing(root: Path) -> None:
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    lines: list[str] = []
    prune(PruneConfig(root, keep_chains=1, dry_run=True), lines.append)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert [line.split(" (")[0] for line in lines] == [
        f"would remove {root / 'c'}",
        f"would remove {root / 'b'}",
        f"keeping {root / 'a'}",
    ]


def test_keeping_more_than_there_are_removes_nothing(root: Path) -> None:
    result = prune(PruneConfig(root, keep_chains=5), lambda _: None)
    assert result.removed == ()
    assert {p.name for p in root.iterdir()} == {"a", "b", "c", "half", "notes"}


def test_leftover_of_interrupted_prune_is_finished(root: Path) -> None:
    (root / ".c.pruning").mkdir()
    (root / ".c.pruning" / "vda.inc.virtnbdbackup.1.data").write_bytes(b"x")
    lines: list[str] = []
    prune(PruneConfig(root, keep_chains=3), lines.append)
    assert not (root / ".c.pruning").exists()
    assert lines[0] == f"removing {root / '.c.pruning'} (left by an interrupted prune)"


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_must_be_positive(root: Path, keep: int) -> None:
    with pytest.raises(UsageError, match="--keep-chains must be at least 1"):
        prune(PruneConfig(root, keep_chains=keep), lambda _: None)


def test_chain_dir_as_root_is_refused(root: Path) -> None:
    with pytest.raises(UsageError, match="is itself a chain directory"):
        prune(PruneConfig(root / "a", keep_chains=1), lambda _: None)


def test_cli_prune(root: Path) -> None:
    result = CliRunner().invoke(main, ["prune", str(root), "--keep-chains", "1"])
    assert result.exit_code == 0, result.output
    assert f"removing {root / 'b'}" in result.output
    assert sorted(p.name for p in root.iterdir()) == ["a", "half", "notes"]


def test_cli_missing_root_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["prune", str(tmp_path / "nope"), "--keep-chains", "1"], prog_name="vbbackup"
    )
    assert result.exit_code == UsageError.exit_code
    assert result.output.strip().splitlines() == [
        f"vbbackup: error: backup root does not exist or is not a directory: {tmp_path / 'nope'}"
    ]


def test_killed_at_every_step_leaves_no_half_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash before each rename and removal of prune in turn: the kept chains are whole,
    the doomed one is whole or out of sight, and the next prune ends in the same place."""
    step = 0
    while True:
        root = tmp_path / f"run{step}"
        root.mkdir()
        make_chain(root, "old", "2026-11-01T10:00:00", incs=3)
        make_chain(root, "new", "2026-11-20T10:00:00")
        whole = sorted(p.name for p in (root / "new").rglob("*"))
        try:
            with dying_at(monkeypatch, step):
                prune(PruneConfig(root, keep_chains=1), lambda _: None)
            finished = True
        except Crash:
            finished = False
        assert sorted(p.name for p in (root / "new").rglob("*")) == whole, step
        visible = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
        assert visible in (["new", "old"], ["new"]), step
        if "old" in visible:  # not renamed yet: still a whole chain
            assert len(list((root / "old").glob("*.data"))) == 4, step
        prune(PruneConfig(root, keep_chains=1), lambda _: None)
        assert sorted(p.name for p in root.iterdir()) == ["new"], step
        if finished:
            break
        step += 1
    assert step > 5
