"""info (and the survey under it and verify): the chain, sizes and every problem, at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chain.chains import write_chain, write_stream
from vbbackup.engine.info import InfoConfig, human_size, info, render
from vbbackup.errors import ChainError

KiB = 1024
SIZE = 128 * KiB
STEPS = [[(0, b"a" * 4 * KiB), (4 * KiB, SIZE - 4 * KiB)], [(8 * KiB, b"b" * 100)], [(0, 512)]]


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    write_chain(tmp_path / "set", SIZE, STEPS[:2], disk="vdb", compressed=True)
    write_chain(tmp_path / "set", SIZE, STEPS)  # its vm.cpt lists three checkpoints
    return tmp_path / "set"


def test_chain_and_sizes(backup: Path) -> None:
    report = info(InfoConfig(backup))
    assert report["domain"] == "vm"
    assert [(p["name"], p["level"], p["parent"]) for p in report["chain"]] == [
        ("virtnbdbackup.0", "full", None),
        ("virtnbdbackup.1", "inc", "virtnbdbackup.0"),
        ("virtnbdbackup.2", "inc", "virtnbdbackup.1"),
    ]
    vda = report["disks"]["vda"]
    assert [b["file"] for b in vda] == [
        "vda.full.data",
        "vda.inc.virtnbdbackup.1.data",
        "vda.inc.virtnbdbackup.2.data",
    ]
    assert [b["data_size"] for b in vda] == [4 * KiB, 100, 0]
    assert vda[0]["file_size"] == (backup / "vda.full.data").stat().st_size
    assert report["disks"]["vdb"][0]["compression"] == "lz4 (level 2)"
    # vdb has no inc 2: its chain stops early, which info reports
    assert report["problems"] == [
        f"{backup}/vdb.inc.virtnbdbackup.2.data: missing incremental (checkpoint virtnbdbackup.2)"
    ]


def test_broken_links_and_strays_all_reported(backup: Path) -> None:
    write_stream(
        backup / "vda.inc.virtnbdbackup.2.data",
        SIZE,
        [(0, b"x")],
        checkpoint="virtnbdbackup.2",
        parent="virtnbdbackup.0",
    )
    write_stream(
        backup / "vda.inc.stray.data", SIZE, [(0, b"y")], checkpoint="stray", parent="nowhere"
    )
    (backup / "vdb.full.data").write_bytes(b"not a stream at all, just junk here.....")
    report = info(InfoConfig(backup))
    problems = report["problems"]
    assert (
        f"{backup}/vda.inc.virtnbdbackup.2.data: broken parent link: "
        "parent is 'virtnbdbackup.0', expected 'virtnbdbackup.1'"
    ) in problems
    assert (  # readers leave it out, so it is no problem of the chain's points
        f"{backup}/vda.inc.stray.data: incremental 'stray' is not in the checkpoint list, not "
        "part of the chain (a run that did not finish?), ignored"
    ) in report["warnings"]
    assert any(
        p.startswith(f"{backup}/vdb.full.data: at byte 0: unreadable meta") for p in problems
    )


def test_without_cpt_the_metas_link_the_chain(tmp_path: Path) -> None:
    write_chain(tmp_path, SIZE, STEPS, cpt=False)
    report = info(InfoConfig(tmp_path))
    assert [p["name"] for p in report["chain"]] == [f"virtnbdbackup.{k}" for k in range(3)]
    assert report["problems"] == []
    assert report["domain"] is None
    assert "Backup set" in render(report) and "domain unknown" in render(report)


def test_not_a_backup_set(tmp_path: Path) -> None:
    with pytest.raises(ChainError, match=f"no backup data files \\(\\*.data\\) in {tmp_path}"):
        info(InfoConfig(tmp_path))


def test_human_size() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 5 * 2**30, None)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.0 GiB",
        "?",
    ]


def test_a_copy_only_disk_next_to_a_chain_is_no_problem(backup: Path) -> None:
    write_stream(backup / "vdc.copy.data", SIZE, [(0, b"c" * 512), (512, SIZE - 512)],
                 checkpoint="", parent=None)  # fmt: skip
    report = info(InfoConfig(backup))
    assert [b["level"] for b in report["disks"]["vdc"]] == ["copy"]
    assert not [p for p in report["problems"] if "vdc" in p]


def test_saved_boot_files_are_listed(backup: Path) -> None:
    xml = (
        "<domain><name>vm</name><os><type>hvm</type>"
        "<nvram>/var/lib/libvirt/qemu/nvram/vm_VARS.fd</nvram>"
        "<kernel>/boot/vmlinuz</kernel></os></domain>"
    )
    (backup / "vmconfig.virtnbdbackup.0.xml").write_text(xml)
    (backup / "vmconfig.virtnbdbackup.1.xml").write_text(xml)
    for name in (
        "vm_VARS.fd.virtnbdbackup.0",
        "vm_VARS.fd.virtnbdbackup.1",
        "vmlinuz.virtnbdbackup.0",
    ):
        (backup / name).write_bytes(b"x")
    report = info(InfoConfig(backup))
    assert [(b["kind"], b["file"]) for b in report["boot_files"]] == [
        ("nvram", "vm_VARS.fd.virtnbdbackup.0"),
        ("nvram", "vm_VARS.fd.virtnbdbackup.1"),
        ("kernel", "vmlinuz.virtnbdbackup.0"),
    ]
    assert "  kernel  vmlinuz.virtnbdbackup.0  (from /boot/vmlinuz)" in render(report)


def test_checkpoints_merged_into_a_consolidated_full(tmp_path: Path) -> None:
    write_chain(tmp_path, SIZE, STEPS)
    (tmp_path / "vda.full.data").unlink()
    (tmp_path / "vda.inc.virtnbdbackup.1.data").unlink()
    write_stream(tmp_path / "vda.full.data", SIZE, [(0, SIZE)], checkpoint="virtnbdbackup.1",
                 parent=None)  # fmt: skip
    report = info(InfoConfig(tmp_path))
    assert [(p["name"], p["level"]) for p in report["chain"]] == [
        ("virtnbdbackup.0", "merged"),
        ("virtnbdbackup.1", "full"),
        ("virtnbdbackup.2", "inc"),
    ]
    assert report["problems"] == []
