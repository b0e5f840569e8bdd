"""Directory -> chain -> point resolution, and every error a user can hit."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.chain.chains import Model, write_chain, write_stream
from vbbackup.chain import BackupSet, PointInTimeView, open_view
from vbbackup.errors import ChainError, StreamFormatError

SIZE = 64 * 1024
STEPS = [
    [(0, b"a" * 4096), (4096, SIZE - 4096)],
    [(8192, b"b" * 4096)],
    [(0, 4096), (16384, b"c" * 8192)],
]


@pytest.fixture
def chain_dir(tmp_path: Path) -> Path:
    write_chain(tmp_path, SIZE, STEPS)
    return tmp_path


def model_at(k: int) -> bytes:
    model = Model(SIZE)
    for frames in STEPS[: k + 1]:
        model.apply(frames)
    return bytes(model.data)


def add_diff(directory: Path, ts: int, parent: str, fill: bytes) -> None:
    write_stream(
        directory / f"vda.diff.{ts}.data",
        SIZE,
        [(32768, fill * 4096)],
        checkpoint="virtnbdbackup.next",
        parent=parent,
    )


def test_points_default_and_until(chain_dir: Path) -> None:
    bset = BackupSet(chain_dir)
    assert bset.disks == ("vda",)
    assert bset.checkpoints == ("virtnbdbackup.0", "virtnbdbackup.1", "virtnbdbackup.2")
    assert [p.name for p in bset.points()] == list(bset.checkpoints)
    with open_view(chain_dir) as view:
        assert view.read(0, SIZE) == model_at(2)
    for k in range(3):
        with open_view(chain_dir, until=f"virtnbdbackup.{k}") as view:
            assert view.read(0, SIZE) == model_at(k)
            assert len(view.files) == k + 1
    info = bset.disk_info()
    assert (info.name, info.virtual_size, info.disk_format) == ("vda", SIZE, "qcow2")


def test_until_accepts_the_file_name(chain_dir: Path) -> None:
    with open_view(chain_dir, until="vda.inc.virtnbdbackup.1.data") as view:
        assert view.read(0, SIZE) == model_at(1)


def test_chain_without_cpt_follows_the_metas(tmp_path: Path) -> None:
    write_chain(tmp_path, SIZE, STEPS, cpt=False)
    assert [p.name for p in BackupSet(tmp_path).points()][-1] == "virtnbdbackup.2"
    with open_view(tmp_path) as view:
        assert view.read(0, SIZE) == model_at(2)


def test_differentials_sit_on_their_parent(chain_dir: Path) -> None:
    add_diff(chain_dir, 1700000100, "virtnbdbackup.1", b"x")
    add_diff(chain_dir, 1700000200, "virtnbdbackup.2", b"y")
    add_diff(chain_dir, 1700000300, "virtnbdbackup.2", b"z")
    names = [p.name for p in BackupSet(chain_dir).points()]
    assert names == [
        "virtnbdbackup.0",
        "virtnbdbackup.1",
        "diff.1700000100",
        "virtnbdbackup.2",
        "diff.1700000200",
        "diff.1700000300",
    ]
    with open_view(chain_dir, until="diff.1700000100") as view:
        expected = bytearray(model_at(1))
        expected[32768 : 32768 + 4096] = b"x" * 4096
        assert view.read(0, SIZE) == expected
    with open_view(chain_dir) as view:  # newest point: the last differential
        assert view.read(32768, 4096) == b"z" * 4096


def test_copy_backup_alone(tmp_path: Path) -> None:
    write_stream(tmp_path / "sda.copy.data", SIZE, [(0, b"q" * SIZE)], checkpoint="", parent=None)
    with open_view(tmp_path) as view:
        assert view.point.name == "copy"
        assert view.read(SIZE - 3, 3) == b"qqq"


def test_explicit_files(chain_dir: Path) -> None:
    files = ["vda.full.data", "vda.inc.virtnbdbackup.1.data"]
    with open_view(chain_dir, files=files) as view:
        assert view.read(0, SIZE) == model_at(1)
    with pytest.raises(ChainError, match="first file must be a full or copy"):
        open_view(chain_dir, files=["vda.inc.virtnbdbackup.1.data"])
    with pytest.raises(ChainError, match="chain does not link: .* has parent 'virtnbdbackup.1'"):
        open_view(chain_dir, files=["vda.full.data", "vda.inc.virtnbdbackup.2.data"])
    with pytest.raises(ChainError, match="missing file in the chain: .*nope.data"):
        open_view(chain_dir, files=["vda.full.data", "nope.data"])


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match=f"backup directory does not exist: {tmp_path}/none$"):
        open_view(tmp_path / "none")
    with pytest.raises(ChainError, match="no backup data files"):
        open_view(tmp_path)


def test_unknown_disk_lists_known_ones(chain_dir: Path) -> None:
    write_chain(chain_dir, SIZE, STEPS, disk="vdb")
    with pytest.raises(ChainError, match=r"unknown disk 'sdz' .* \(disks: vda, vdb\)$"):
        open_view(chain_dir, disk="sdz")
    with pytest.raises(ChainError, match=r"several disks \(vda, vdb\): choose one"):
        open_view(chain_dir)
    with open_view(chain_dir, disk="vdb") as view:
        assert view.read(0, SIZE) == model_at(2)


def test_unknown_checkpoint_lists_the_chain(chain_dir: Path) -> None:
    with pytest.raises(
        ChainError,
        match=r"unknown checkpoint 'virtnbdbackup.7' for disk vda "
        r"\(chain: virtnbdbackup.0, virtnbdbackup.1, virtnbdbackup.2\)$",
    ):
        open_view(chain_dir, until="virtnbdbackup.7")


def test_missing_incremental(chain_dir: Path) -> None:
    os.unlink(chain_dir / "vda.inc.virtnbdbackup.1.data")
    with pytest.raises(ChainError, match=r"missing file in the chain: .*vda.inc.virtnbdbackup.1"):
        open_view(chain_dir)
    with pytest.raises(ChainError, match="missing file in the chain"):
        open_view(chain_dir, until="virtnbdbackup.2")
    with open_view(chain_dir, until="virtnbdbackup.0") as view:
        assert view.read(0, SIZE) == model_at(0)


def test_truncated_file(chain_dir: Path) -> None:
    path = chain_dir / "vda.inc.virtnbdbackup.2.data"
    os.truncate(path, path.stat().st_size - 50)
    with pytest.raises(StreamFormatError, match=r"vda.inc.virtnbdbackup.2.data: at byte \d+: "):
        open_view(chain_dir)


def test_parents_that_do_not_link(chain_dir: Path) -> None:
    write_stream(
        chain_dir / "vda.inc.virtnbdbackup.2.data",
        SIZE,
        [],
        checkpoint="virtnbdbackup.2",
        parent="virtnbdbackup.0",
    )
    with pytest.raises(
        ChainError,
        match=r"chain does not link: .*inc.virtnbdbackup.2.data: broken parent link: parent is "
        r"'virtnbdbackup.0', expected 'virtnbdbackup.1'",
    ):
        open_view(chain_dir)


def test_orphan_differential(chain_dir: Path) -> None:
    add_diff(chain_dir, 1700000100, "elsewhere.3", b"x")
    with pytest.raises(ChainError, match="parent checkpoint 'elsewhere.3', which is not in"):
        BackupSet(chain_dir).points()


def test_bad_cpt(chain_dir: Path) -> None:
    (chain_dir / "vm.cpt").write_text(json.dumps({"a": 1}))
    with pytest.raises(ChainError, match="not a JSON array"):
        BackupSet(chain_dir)


def test_extents_limit_and_reads_from_threads(tmp_path: Path) -> None:
    frames = [(k * 8192, bytes([k % 251 + 1]) * 4096) for k in range(256)]
    write_chain(tmp_path, 256 * 8192, [frames], compressed=True, piece=1024)
    with open_view(tmp_path) as view:
        runs = view.extents(0, view.size, limit=3)
        assert runs == [(0, 4096, False), (4096, 4096, True), (8192, 4096, False)]

        def check(k: int) -> bool:
            return view.read(k * 8192 + 1000, 4096) == (bytes([k % 251 + 1]) * 3096 + bytes(1000))

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(check, list(range(255)) * 4))


def test_read_outside_the_disk(chain_dir: Path) -> None:
    with open_view(chain_dir) as view, pytest.raises(ValueError, match="outside the disk"):
        view.read(SIZE - 1, 2)


def test_file_removed_after_the_scan(chain_dir: Path) -> None:
    point = BackupSet(chain_dir).resolve()
    os.unlink(chain_dir / "vda.inc.virtnbdbackup.2.data")
    with pytest.raises(ChainError, match=r"missing file in the chain: .*inc.virtnbdbackup.2.data$"):
        PointInTimeView(point)


@pytest.mark.parametrize("new_size", [SIZE * 2, SIZE // 2])
def test_disk_resized_between_backups(tmp_path: Path, new_size: int) -> None:
    """The newest file's size wins; older bytes past a shrunk end are cut off."""
    write_stream(tmp_path / "vda.full.data", SIZE, [(0, b"a" * SIZE)], checkpoint="c0", parent=None)
    write_stream(
        tmp_path / "vda.inc.c1.data",
        new_size,
        [(new_size - 4096, b"b" * 4096)],
        checkpoint="c1",
        parent="c0",
    )
    (tmp_path / "vm.cpt").write_text(json.dumps(["c0", "c1"]))
    expected = bytearray(new_size)
    kept = min(SIZE, new_size)
    expected[:kept] = b"a" * kept
    expected[new_size - 4096 :] = b"b" * 4096
    with open_view(tmp_path) as view:
        assert view.size == new_size
        assert view.read(0, new_size) == expected
        assert view.extents(0, new_size)[-1][2] is False


def test_a_raw_disks_copy_serves_every_point_of_the_chain(tmp_path: Path) -> None:
    """``--raw``: sdb was copied whole by the full; the chain's points serve that copy."""
    names = write_chain(tmp_path, 64 * 1024, [[(0, b"a" * 4096), (4096, 60 * 1024)],
                                              [(0, b"b" * 4096)]])  # fmt: skip
    write_stream(tmp_path / "sdb.copy.data", 64 * 1024, [(0, b"c" * 512), (512, 65024)],
                 checkpoint=names[0], parent=None)  # fmt: skip
    backup = BackupSet(tmp_path)
    for name in names:
        assert backup.resolve("sdb", name).name == "copy"
    with pytest.raises(ChainError, match="unknown checkpoint 'nope' for disk sdb"):
        backup.resolve("sdb", "nope")


def test_a_runs_differentials_match_across_disks_a_second_apart(tmp_path: Path) -> None:
    """virtnbdbackup stamps each disk's diff with its own second: vda.diff.T+1, vdb.diff.T."""
    write_chain(tmp_path, SIZE, STEPS)
    write_chain(tmp_path, SIZE, STEPS, disk="vdb")
    for disk, stamps in (("vda", (1700000101, 1700000201)), ("vdb", (1700000100, 1700000200))):
        for stamp, fill in zip(stamps, (b"x", b"y"), strict=True):
            write_stream(tmp_path / f"{disk}.diff.{stamp}.data", SIZE, [(32768, fill * 4096)],
                         checkpoint="virtnbdbackup.next", parent="virtnbdbackup.2")  # fmt: skip
    bset = BackupSet(tmp_path)
    assert bset.resolve("vdb", "diff.1700000101").name == "diff.1700000100"
    assert bset.resolve("vdb", "diff.1700000201").name == "diff.1700000200"
    assert bset.resolve("vda", "diff.1700000100").name == "diff.1700000101"
    with open_view(tmp_path, "vdb", "diff.1700000201") as view:
        assert view.read(32768, 4096) == b"y" * 4096
    with pytest.raises(ChainError, match="unknown checkpoint 'diff.1700009999' for disk vdb"):
        bset.resolve("vdb", "diff.1700009999")


def test_differentials_far_apart_are_not_matched(tmp_path: Path) -> None:
    write_chain(tmp_path, SIZE, STEPS)
    write_chain(tmp_path, SIZE, STEPS, disk="vdb")
    for disk, stamp in (("vda", 1700000500), ("vdb", 1700000100)):
        write_stream(tmp_path / f"{disk}.diff.{stamp}.data", SIZE, [(32768, b"x" * 4096)],
                     checkpoint="virtnbdbackup.next", parent="virtnbdbackup.2")  # fmt: skip
    with pytest.raises(ChainError, match="unknown checkpoint 'diff.1700000500' for disk vdb"):
        BackupSet(tmp_path).resolve("vdb", "diff.1700000500")
