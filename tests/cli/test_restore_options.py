"""restore --sequence (virtnbdrestore's -s), --compress, and the restore log in OUTDIR;
vbmount copy/serve --sequence."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.chain.chains import write_chain
from tests.harness.fixtures import require
from vbbackup.cli import main
from vbmount.cli import main as vbmount_main

KiB = 1024
SIZE = 4096 * KiB
STEPS = [
    [(0, b"A" * 512 * KiB), (512 * KiB, SIZE - 512 * KiB)],
    [(64 * KiB, b"B" * 8 * KiB)],
    [(128 * KiB, b"C" * 8 * KiB), (1024 * KiB, b"D" * 64 * KiB)],
]
pytestmark = pytest.mark.integration


def run(*args: str | Path, cli: object = main) -> Result:
    return CliRunner(mix_stderr=False).invoke(cli, [str(a) for a in args],  # type: ignore[arg-type]
                                              prog_name="vbbackup")  # fmt: skip


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    require("nbdkit", "nbdkit_python", "qemu")
    directory = tmp_path / "set"
    write_chain(directory, SIZE, STEPS)
    return directory


def same(a: Path, b: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)]).returncode == 0


def test_sequence_restores_exactly_those_files(chain: Path, tmp_path: Path) -> None:
    by_until = run("restore", chain, "-o", tmp_path / "u", "--until", "virtnbdbackup.1",
                   "--format", "raw", "--no-progress")  # fmt: skip
    assert by_until.exit_code == 0, by_until.stderr
    seq = run("restore", chain, "-o", tmp_path / "s", "--format", "raw", "--no-progress",
              "--sequence", "vda.full.data,vda.inc.virtnbdbackup.1.data")  # fmt: skip
    assert seq.exit_code == 0, seq.stderr
    assert same(tmp_path / "s" / "vda.raw", tmp_path / "u" / "vda.raw")
    newest = run("restore", chain, "-o", tmp_path / "n", "--format", "raw", "--no-progress")
    assert newest.exit_code == 0 and not same(
        tmp_path / "s" / "vda.raw", tmp_path / "n" / "vda.raw"
    )
    (log,) = (tmp_path / "s").glob("restore.*.log")
    text = log.read_text()
    assert "vda: vda.full.data,vda.inc.virtnbdbackup.1.data -> " in text
    assert text.endswith(" INFO done\n")


def test_a_sequence_that_does_not_link_is_refused(chain: Path, tmp_path: Path) -> None:
    result = run("restore", chain, "-o", tmp_path / "s", "--no-progress",
                 "--sequence", "vda.full.data,vda.inc.virtnbdbackup.2.data")  # fmt: skip
    assert result.exit_code == 4
    assert result.stderr.strip() == (
        f"vbbackup: error: chain does not link: {chain}/vda.inc.virtnbdbackup.2.data has "
        "parent 'virtnbdbackup.1', expected 'virtnbdbackup.0'"
    )
    assert not (tmp_path / "s").exists()
    both = run("restore", chain, "-o", tmp_path / "b", "--until", "virtnbdbackup.1",
               "--sequence", "vda.full.data")  # fmt: skip
    assert both.exit_code == 2
    assert "--sequence names one disk's files in order: no --until, one --disk" in both.stderr


def test_compress_writes_compressed_clusters(chain: Path, tmp_path: Path) -> None:
    plain = run("restore", chain, "-o", tmp_path / "p", "--format", "qcow2", "--no-progress")
    packed = run("restore", chain, "-o", tmp_path / "c", "--compress", "--no-progress")
    assert plain.exit_code == 0 and packed.exit_code == 0, packed.stderr
    image = tmp_path / "c" / "vda.qcow2"
    assert same(image, tmp_path / "p" / "vda.qcow2")
    check = json.loads(subprocess.run(["qemu-img", "check", "--output=json", str(image)],
                                      capture_output=True, text=True).stdout)  # fmt: skip
    assert check["compressed-clusters"] > 0
    assert image.stat().st_size < (tmp_path / "p" / "vda.qcow2").stat().st_size / 2
    raw = run("restore", chain, "-o", tmp_path / "r", "--compress", "--format", "raw")
    assert raw.exit_code == 2
    assert raw.stderr.strip() == (
        "vbbackup: error: --compress writes qcow2's compressed clusters: not with --format raw"
    )


def test_vbmount_copy_takes_a_sequence(chain: Path, tmp_path: Path) -> None:
    out = tmp_path / "seq.raw"
    result = run("copy", chain, out, "-O", "raw", "--sequence",
                 "vda.full.data,vda.inc.virtnbdbackup.1.data", cli=vbmount_main)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    by_until = tmp_path / "until.raw"
    result = run("copy", chain, by_until, "-O", "raw", "--until", "virtnbdbackup.1",
                 cli=vbmount_main)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert same(out, by_until)
