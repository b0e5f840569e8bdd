"""`vbbackup restore|info|verify` through click: output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from tests.chain.chains import write_chain
from vbbackup.cli import main
from vbbackup.fsutil import file_adler32, write_checksum

KiB = 1024
SIZE = 1024 * KiB
STEPS = [[(0, b"A" * 64 * KiB), (64 * KiB, SIZE - 64 * KiB)], [(4 * KiB, b"B" * 3000)]]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="vbbackup")


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    directory = tmp_path / "set"
    write_chain(directory, SIZE, STEPS, compressed=True)
    for path in directory.glob("*.data"):
        write_checksum(path, file_adler32(path))
    return directory


@pytest.mark.parametrize("name", ["restore", "info", "verify"])
def test_every_option_has_help(name: str) -> None:
    command = main.get_command(click.Context(main), name)
    assert command is not None
    assert command.help
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help"
    assert run(name, "--help").exit_code == 0


def test_info_text_and_json(backup: Path) -> None:
    text = run("info", str(backup))
    assert text.exit_code == 0, text.output
    assert f"Backup set {backup} (domain vm)" in text.output
    assert "virtnbdbackup.1" in text.output and "lz4 (level 2)" in text.output
    assert "Problems: none found" in text.output
    report = json.loads(run("info", str(backup), "--json").output)
    assert [p["name"] for p in report["chain"]] == ["virtnbdbackup.0", "virtnbdbackup.1"]
    (full, inc) = report["disks"]["vda"]
    assert (full["level"], full["virtual_size"], full["data_size"]) == ("full", SIZE, 64 * KiB)
    assert (inc["parent"], inc["checksum_file"], inc["compression"]) == (
        "virtnbdbackup.0",
        True,
        "lz4 (level 2)",
    )


def test_info_names_a_missing_incremental(backup: Path) -> None:
    (backup / "vm.cpt").write_text('["virtnbdbackup.0", "virtnbdbackup.1", "virtnbdbackup.2"]')
    result = run("info", str(backup))
    assert result.exit_code == 4
    assert (
        f"{backup}/vda.inc.virtnbdbackup.2.data: missing incremental (checkpoint virtnbdbackup.2)"
        in result.output
    )
    assert result.output.splitlines()[-1] == f"vbbackup: error: 1 problem(s) found in {backup}"


def test_verify_sound(backup: Path) -> None:
    result = run("verify", str(backup))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == f"{backup}: 2 file(s) sound"


def test_verify_flipped_byte_exits_9_naming_file(backup: Path) -> None:
    path = backup / "vda.inc.virtnbdbackup.1.data"
    data = bytearray(path.read_bytes())
    data[-60] ^= 0x10  # inside the compression trailer's JSON
    path.write_bytes(bytes(data))
    result = run("verify", str(backup))
    assert result.exit_code == 9
    assert f"BAD  {path}" in result.output
    assert f"problem: {path}: adler32 " in result.output
    assert result.output.splitlines()[-1].startswith("vbbackup: error: ")
    assert f"problem(s) found in {backup}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("verify", "{tmp}/nope"), 4, "backup directory does not exist: {tmp}/nope"),
        (("info", "{tmp}/nope"), 4, "backup directory does not exist: {tmp}/nope"),
        (
            ("restore", "{set}", "-o", "{tmp}/out", "--until", "cp9"),
            4,
            "unknown checkpoint 'cp9' for disk vda (chain: virtnbdbackup.0, virtnbdbackup.1)",
        ),
        (
            ("restore", "{set}", "-o", "{tmp}/out", "--disk", "vdz"),
            4,
            "unknown disk 'vdz' in {set} (disks: vda)",
        ),
        (("verify", "{set}", "--until", "cp9"), 4, "unknown checkpoint 'cp9' in {set}"),
    ],
)
def test_bad_input_is_one_line(
    backup: Path, tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, set=backup)

    result = run(*(fill(a) for a in args))
    assert result.exit_code == code, result.output
    assert result.output == f"vbbackup: error: {fill(message)}\n"
    assert not (tmp_path / "out").exists()


def test_restore_then_refuse_then_force(backup: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run("restore", str(backup), "-o", str(out), "--format", "raw")
    assert first.exit_code == 0, first.output
    assert first.output.startswith(f"vda: restored to {out}/vda.raw (raw, 1.0 MiB), ")
    assert " data at virtnbdbackup.1, " in first.output
    second = run("restore", str(backup), "-o", str(out), "--format", "raw")
    assert second.exit_code == 5
    assert second.output == (
        f"vbbackup: error: {out}/vda.raw already exists; refusing to overwrite it (--force)\n"
    )
    third = run("restore", str(backup), "-o", str(out), "--format", "raw", "--force")
    assert third.exit_code == 0, third.output


def test_verify_without_checksums_does_not_claim_sound(backup: Path) -> None:
    for path in [*backup.glob("*.chksum"), *backup.glob("*.sums")]:
        path.unlink()
    result = run("verify", str(backup))
    assert result.exit_code == 0, result.output
    assert f"ok?  {backup}/vda.full.data" in result.output
    assert "warning: " in result.output and "no checksum file" in result.output
    assert result.output.splitlines()[-1] == (
        f"{backup}: no damage found in 2 file(s), but 2 have no checksum file: "
        "some damage in them cannot be detected (see the warnings)"
    )


def test_add_sums_then_damage_is_named(backup: Path) -> None:
    """A set made without side files (virtnbdbackup 1.9.15): --add-sums, then every read checks."""
    for path in [*backup.glob("*.chksum"), *backup.glob("*.sums")]:
        path.unlink()
    added = run("verify", str(backup), "--add-sums")
    assert added.exit_code == 0, added.output
    assert "added  vda.full.data.sums" in added.output
    assert "warning: vda.full.data has no .chksum: its sums record the file as it is now" in (
        added.output
    )
    last = added.output.splitlines()[-1]
    assert last == f"{backup}: sums added for 2 file(s), 0 had them already"
    again = run("verify", str(backup), "--add-sums")
    last = again.output.splitlines()[-1]
    assert last == f"{backup}: sums added for 0 file(s), 2 had them already"
    assert run("verify", str(backup)).output.splitlines()[-1] == f"{backup}: 2 file(s) sound"
    path = backup / "vda.inc.virtnbdbackup.1.data"
    data = bytearray(path.read_bytes())
    data[-200] ^= 1  # inside the last lz4 frame's payload
    path.write_bytes(bytes(data))
    result = run("verify", str(backup))
    assert result.exit_code == 9
    assert f"problem: {path}: at byte " in result.output
    out = backup.parent / "out"
    restored = run("restore", str(backup), "-o", str(out), "--format", "raw")
    assert restored.exit_code != 0
    assert restored.output.startswith(f"vbbackup: error: {path}: at byte "), restored.output
    assert not (out / "vda.raw").exists()


def test_info_after_a_killed_full_names_the_partial(tmp_path: Path) -> None:
    (tmp_path / "vda.full.data.partial").write_bytes(b"meta")
    result = run("info", str(tmp_path))
    assert (result.exit_code, result.output) == (
        4,
        f"vbbackup: error: no finished backup data files in {tmp_path}: vda.full.data.partial "
        "is what a backup that did not finish left (run the backup again)\n",
    )


def test_restore_refuses_a_directory_where_an_image_goes(backup: Path) -> None:
    out = backup.parent / "out"
    (out / "vda.raw").mkdir(parents=True)
    result = run("restore", str(backup), "-o", str(out), "--format", "raw", "--force")
    assert (result.exit_code, result.output) == (
        5,
        f"vbbackup: error: {out}/vda.raw is a directory; a restore replaces files only "
        "(--force or not)\n",
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a read-only tmpfs")
def test_restore_onto_a_read_only_file_system(backup: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "none", str(ro)], check=True)
    try:
        result = run("restore", str(backup), "-o", str(ro / "out"), "--format", "raw")
        assert (result.exit_code, result.output) == (
            1,
            f"vbbackup: error: cannot create restore directory {ro}/out: Read-only file system\n",
        )
        result = run("restore", str(backup), "-o", str(ro), "--format", "raw")
        assert result.exit_code == 1
        assert re.fullmatch(rf"vbbackup: error: cannot write the restore log {ro}/restore\."
                            r"[0-9T-]+\.log: Read-only file system\n", result.output)  # fmt: skip
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_adjust_config_without_a_name_asks_for_one(backup: Path) -> None:
    (backup / "vmconfig.virtnbdbackup.1.xml").write_text("<domain type='kvm'><devices/></domain>")
    result = run("restore", str(backup), "-o", str(backup.parent / "o"), "--adjust-config")
    assert result.exit_code == 2
    assert "has no <name>: give the restored domain one with --name" in result.output
    assert not (backup.parent / "o").exists()


def test_consolidate_names_the_missing_incremental(backup: Path) -> None:
    (backup / "vm.cpt").write_text('["virtnbdbackup.0", "virtnbdbackup.1", "virtnbdbackup.2"]')
    result = run("consolidate", str(backup))
    assert result.exit_code == 4
    assert result.output.startswith(
        f"vbbackup: error: missing file in the chain: {backup}/vda.inc.virtnbdbackup.2.data"
    )


def test_add_sums_refuses_a_damaged_file(backup: Path) -> None:
    for path in backup.glob("*.sums"):
        path.unlink()
    path = backup / "vda.full.data"
    data = bytearray(path.read_bytes())
    data[-300] ^= 1  # its .chksum no longer matches
    path.write_bytes(bytes(data))
    result = run("verify", str(backup), "--add-sums")
    assert result.exit_code == 9
    assert f"problem: {path}: adler32 " in result.output
    last = result.output.splitlines()[-1]
    assert last.startswith("vbbackup: error: ")
    assert last.endswith(f"problem(s) found in {backup}: no sums added for damaged files")
    assert not (backup / "vda.full.data.sums").exists()
    assert (backup / "vda.inc.virtnbdbackup.1.data.sums").exists()


def test_sigkill_mid_restore_leaves_only_the_partial(tmp_path: Path) -> None:
    """Nothing the restore started outlives it (the image is written in the process; helpers
    of the qemu-img path die with it too); the next restore starts over."""
    backup = tmp_path / "big"
    chunk = bytes(range(256)) * 4096  # 1 MiB
    size = 1024 * 1024 * 1024
    # lz4: decoding keeps the restore busy for about 3 s on this machine
    write_chain(backup, size, [[(k * 1024 * 1024, chunk) for k in range(1024)]], compressed=True,
                piece=512 * 1024)  # fmt: skip
    out = tmp_path / "out"
    argv = [sys.executable, "-c", "from vbbackup.cli import main; main()", "restore",
            str(backup), "-o", str(out), "--format", "raw", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "vda.raw.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the image half written
        if partial.exists() and partial.stat().st_blocks > 8192:
            break
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 0.5  # gone at once, not when they would have finished
    while _helpers_of(partial) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _helpers_of(partial) == []
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".log") == ["vda.raw.partial"]
    result = run("restore", str(backup), "-o", str(out), "--format", "raw")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".log") == ["vda.raw"]


def _helpers_of(partial: Path) -> list[str]:
    """nbdkit / qemu-img processes still working on ``partial``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(partial) in cmdline or (f"dir={partial.parent.parent}/big" in cmdline):
            found.append(cmdline)
    return found
