"""verify on synthetic sets: every kind of damage is named with its file (and byte)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chain.chains import write_chain
from vbbackup.engine.verify import VerifyConfig, verify, verify_file
from vbbackup.errors import ChainError
from vbbackup.fsutil import file_adler32, write_checksum

KiB = 1024
SIZE = 256 * KiB
STEPS = [
    [(0, b"A" * 8 * KiB), (8 * KiB, SIZE - 16 * KiB), (SIZE - 8 * KiB, b"Z" * 8 * KiB)],
    [(4 * KiB, b"B" * 3000)],
    [(64 * KiB, 4 * KiB), (100 * KiB, bytes(range(256)) * 8)],
]


def make_set(
    directory: Path, *, compressed: bool = False, checksums: bool = True, sums: bool = True
) -> Path:
    write_chain(directory, SIZE, STEPS, compressed=compressed, piece=2 * KiB, sums=sums)
    if checksums:
        for path in directory.glob("*.data"):
            write_checksum(path, file_adler32(path))
    return directory


def flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compressed", [False, True])
def test_sound_set_with_checksums(tmp_path: Path, compressed: bool) -> None:
    report = verify(VerifyConfig(make_set(tmp_path, compressed=compressed)))
    assert report.sound, report.problems
    assert report.warnings == []
    assert [f.path.name for f in report.files] == [
        "vda.full.data",
        "vda.inc.virtnbdbackup.1.data",
        "vda.inc.virtnbdbackup.2.data",
    ]
    assert {f.checksum for f in report.files} == {"ok"}


@pytest.mark.parametrize("compressed", [False, True])
def test_every_single_flipped_byte_is_caught(tmp_path: Path, compressed: bool) -> None:
    make_set(tmp_path, compressed=compressed)
    path = tmp_path / "vda.inc.virtnbdbackup.2.data"
    original = path.read_bytes()
    for position in range(len(original)):
        flip(path, position)
        result = verify_file(path)
        assert not result.sound, f"flipped byte at {position} not caught"
        path.write_bytes(original)
    assert verify_file(path).sound


def test_flipped_lz4_byte_without_checksum_names_the_position(tmp_path: Path) -> None:
    make_set(tmp_path, compressed=True, checksums=False)
    path = tmp_path / "vda.full.data"
    size = path.stat().st_size
    flip(path, size // 2)  # inside the compressed payload of the big data frame
    report = verify(VerifyConfig(tmp_path))
    assert not report.sound
    (problem,) = report.problems
    assert problem.path == path
    assert problem.position is not None and problem.position <= size // 2
    assert "corrupt lz4 frame" in problem.message
    assert f"{path}: at byte {problem.position}: corrupt lz4 frame" in str(problem)


def test_flipped_offset_in_full_without_checksum_is_caught(tmp_path: Path) -> None:
    make_set(tmp_path, checksums=False)
    path = tmp_path / "vda.full.data"
    header = path.read_bytes().index(b"zero 0000")
    flip(path, header + 20)  # last hex digit of the zero frame's start: 0x2000 -> 0x2001
    problem = verify(VerifyConfig(tmp_path)).problems[0]
    assert str(problem) == (
        f"{path}: at byte {header}: gap [8192, 8193) before this frame: "
        "a full stream covers the disk"
    )


def test_uncompressed_payload_without_checksum_is_a_warning(tmp_path: Path) -> None:
    make_set(tmp_path, checksums=False, sums=False)
    path = tmp_path / "vda.inc.virtnbdbackup.1.data"
    flip(path, path.read_bytes().index(b"BBBB") + 100)
    report = verify(VerifyConfig(tmp_path))
    assert report.sound
    assert f"{path}: no checksum file: a flipped byte inside a data payload" in "\n".join(
        report.warnings
    )
    assert {f.checksum for f in report.files} == {"none"}


def test_checksum_mismatch_is_named(tmp_path: Path) -> None:
    make_set(tmp_path, sums=False)
    path = tmp_path / "vda.inc.virtnbdbackup.1.data"
    flip(path, path.read_bytes().index(b"BBBB") + 100)
    (problem,) = verify(VerifyConfig(tmp_path)).problems
    assert str(problem).startswith(f"{path}: adler32 ")
    assert "does not match vda.inc.virtnbdbackup.1.data.chksum" in problem.message


@pytest.mark.parametrize("compressed", [False, True])
def test_damaged_piece_is_named_with_its_offset(tmp_path: Path, compressed: bool) -> None:
    data = bytes(range(256)) * 256  # 64 KiB: four checksum pieces
    write_chain(tmp_path, SIZE, [[(0, data), (64 * KiB, SIZE - 64 * KiB)]],
                compressed=compressed, piece=32 * KiB)  # fmt: skip
    path = tmp_path / "vda.full.data"
    # a byte of disk offset 40 KiB + 5: the third piece
    frame = next(f for f in _index(path) if f.kind == "data" and f.start <= 40 * KiB < f.end)
    position = frame.payload_pos + (40 * KiB + 5 - frame.start if not compressed else 20)
    flip(path, position)
    report = verify(VerifyConfig(tmp_path))
    (result,) = [f for f in report.files if not f.sound]
    assert result.path == path and result.sums == "mismatch"
    message = str(result.problems[0])
    if compressed:  # lz4's own checksum, or ours: either way the lz4 frame's place is named
        assert message.startswith(f"{path}: at byte {frame.payload_pos}: ")
    else:
        assert message == (
            f"{path}: at byte {frame.payload_pos + 32 * KiB}: frame 0: disk bytes "
            f"[{32 * KiB}, +{16 * KiB}) do not match their checksum in {path}.sums: damaged data"
        )


def test_flipped_header_digit_is_a_layout_mismatch(tmp_path: Path) -> None:
    make_set(tmp_path, checksums=False)
    path = tmp_path / "vda.inc.virtnbdbackup.2.data"
    data = path.read_bytes()
    header = data.index(b"data 0000000000019000")  # start of the 100 KiB frame, 0x19000
    path.write_bytes(data[: header + 19] + b"8" + data[header + 20 :])  # 0x19000 -> 0x18000
    (problem,) = verify(VerifyConfig(tmp_path)).problems
    assert str(problem) == (
        f"{path}: at byte 0: frame layout does not match {path}.sums (a header or the meta changed)"
    )


def _index(path: Path):  # noqa: ANN202 - a test helper
    from vbbackup.format import read_index

    with open(path, "rb") as f:
        return list(read_index(f, str(path)))


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_file(tmp_path: Path, compressed: bool) -> None:
    make_set(tmp_path, compressed=compressed, checksums=False)
    path = tmp_path / "vda.full.data"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])
    (problem,) = verify(VerifyConfig(tmp_path)).problems
    assert problem.path == path
    assert problem.position is not None


def test_missing_incremental(tmp_path: Path) -> None:
    make_set(tmp_path)
    (tmp_path / "vda.inc.virtnbdbackup.1.data").unlink()
    report = verify(VerifyConfig(tmp_path))
    messages = [str(p) for p in report.problems]
    assert (
        f"{tmp_path}/vda.inc.virtnbdbackup.1.data: missing incremental (checkpoint virtnbdbackup.1)"
        in messages
    )
    assert any("broken parent link: parent is 'virtnbdbackup.1'" not in m for m in messages)
    # the point before the gap is still sound
    assert verify(VerifyConfig(tmp_path, until="virtnbdbackup.0")).sound


def test_broken_parent_link(tmp_path: Path) -> None:
    make_set(tmp_path)
    (tmp_path / "vm.cpt").write_text('["virtnbdbackup.0", "virtnbdbackup.2", "virtnbdbackup.1"]')
    messages = [str(p) for p in verify(VerifyConfig(tmp_path)).problems]
    assert (
        f"{tmp_path}/vda.inc.virtnbdbackup.2.data: broken parent link: "
        "parent is 'virtnbdbackup.1', expected 'virtnbdbackup.0'"
    ) in messages


def test_until_checks_only_the_files_it_needs(tmp_path: Path) -> None:
    make_set(tmp_path)
    flip(tmp_path / "vda.inc.virtnbdbackup.2.data", 500)
    assert verify(VerifyConfig(tmp_path, until="virtnbdbackup.1")).sound
    report = verify(VerifyConfig(tmp_path, until="virtnbdbackup.2"))
    assert [f.path.name for f in report.files if not f.sound] == ["vda.inc.virtnbdbackup.2.data"]
    with pytest.raises(ChainError, match="unknown checkpoint 'nope'"):
        verify(VerifyConfig(tmp_path, until="nope"))


def test_unfinished_partial_file_is_a_warning(tmp_path: Path) -> None:
    make_set(tmp_path)
    (tmp_path / "vda.inc.virtnbdbackup.3.data.partial").write_bytes(b"meta")
    report = verify(VerifyConfig(tmp_path))
    assert report.sound
    assert any("unfinished file" in w for w in report.warnings)
