"""restore on synthetic sets, through the real nbdkit plugin and qemu-img.

The expected bytes come from ``Model`` (the overlay rule on a bytearray);
restored images are read back with ``qemu-img convert`` to raw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chain.chains import Model, write_chain
from vbbackup.engine.copyout import Export, copy_out
from vbbackup.engine.restore import RestoreConfig, plan, restore
from vbbackup.errors import ChainError, TargetExistsError, VbError

KiB = 1024
MiB = 1024 * KiB
SIZE = 4 * MiB
STEPS = [
    [(0, b"A" * 64 * KiB), (64 * KiB, SIZE - 192 * KiB), (SIZE - 128 * KiB, b"Z" * 128 * KiB)],
    [(4 * KiB, b"B" * 3000), (MiB, os.urandom(300 * KiB))],
    [(SIZE - 128 * KiB, 64 * KiB), (2 * MiB + 17, bytes(range(256)) * 40)],
]

VMCONFIG = """<domain type='qemu'>
  <name>src</name>
  <uuid>8d3c8b5e-0d6f-4b5c-9d1e-1b2c3d4e5f60</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/somewhere/else/system-disk.qcow2' index='2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/isos/install.iso'/>
      <target dev='hdc' bus='ide'/>
    </disk>
  </devices>
</domain>
"""

pytestmark = pytest.mark.skipif(
    not (shutil.which("nbdkit") and shutil.which("qemu-img")), reason="needs nbdkit and qemu-img"
)


def is_log(path: Path) -> bool:
    """restore's own log in OUTDIR (restore.<time>.log)."""
    return path.name.startswith("restore.") and path.name.endswith(".log")


def expected(k: int) -> bytes:
    model = Model(SIZE)
    for step in STEPS[: k + 1]:
        model.apply(step)
    return bytes(model.data)


def read_image(path: Path, fmt: str) -> bytes:
    raw = path.with_name(path.name + ".readback")
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, raw], check=True)
    try:
        return raw.read_bytes()
    finally:
        raw.unlink()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.fixture(params=[False, True], ids=["plain", "lz4"])
def backup(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    directory = tmp_path / "set"
    write_chain(directory, SIZE, STEPS, compressed=request.param, piece=96 * KiB)
    return directory


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_every_point_restores_exactly(backup: Path, tmp_path: Path, fmt: str) -> None:
    for k in range(len(STEPS)):
        out = tmp_path / f"out{k}"
        result = restore(RestoreConfig(backup, out, until=f"virtnbdbackup.{k}", fmt=fmt))
        (disk,) = result.disks
        assert disk.image == out / f"vda.{fmt}"
        assert read_image(disk.image, fmt) == expected(k), f"point {k}"
        assert sorted(p.name for p in out.iterdir() if not is_log(p)) == [f"vda.{fmt}"]
        (log,) = [p for p in out.iterdir() if is_log(p)]
        assert "vda: vda.full.data" in log.read_text() and log.read_text().endswith("done\n")


def test_holes_stay_holes(backup: Path, tmp_path: Path) -> None:
    result = restore(RestoreConfig(backup, tmp_path / "out", fmt="raw"))
    image = result.disks[0].image
    assert image.stat().st_size == SIZE
    # data: 64K + 3000 B + 300K + 10K and 64K at the end; the rest is holes
    assert allocated(image) <= 640 * KiB
    prealloc = restore(RestoreConfig(backup, tmp_path / "pre", fmt="raw", preallocate=True))
    assert allocated(prealloc.disks[0].image) >= SIZE
    assert read_image(prealloc.disks[0].image, "raw") == expected(2)


def test_refuses_to_overwrite_and_force_does(backup: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    restore(RestoreConfig(backup, out, until="virtnbdbackup.0", fmt="raw"))
    image = out / "vda.raw"
    with pytest.raises(TargetExistsError, match=f"{image} already exists; refusing to overwrite"):
        restore(RestoreConfig(backup, out, fmt="raw"))
    assert read_image(image, "raw") == expected(0)
    restore(RestoreConfig(backup, out, fmt="raw", force=True))
    assert read_image(image, "raw") == expected(2)


def test_failed_restore_leaves_no_image(tmp_path: Path) -> None:
    directory = tmp_path / "set"
    write_chain(directory, SIZE, STEPS, compressed=True, piece=96 * KiB)
    data = tmp_path / "set" / "vda.inc.virtnbdbackup.1.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside an lz4 frame: indexing passes, the copy fails
    data.write_bytes(bytes(raw))
    out = tmp_path / "out"
    with pytest.raises(VbError):
        restore(RestoreConfig(directory, out, fmt="qcow2"))
    (log,) = list(out.iterdir())  # the restore log alone, saying why
    assert is_log(log) and " ERROR failed: " in log.read_text()


def test_unknown_checkpoint_writes_nothing(backup: Path, tmp_path: Path) -> None:
    with pytest.raises(ChainError, match="unknown checkpoint 'nope'"):
        restore(RestoreConfig(backup, tmp_path / "out", until="nope"))
    assert not (tmp_path / "out").exists()


def test_qcow2_options_from_qcow_json(backup: Path, tmp_path: Path) -> None:
    info = {
        "virtual-size": SIZE,
        "format": "qcow2",
        "cluster-size": 16384,
        "format-specific": {"type": "qcow2", "data": {"compat": "0.10", "refcount-bits": 16}},
    }
    (backup / "vda.virtnbdbackup.2.qcow.json").write_text(json.dumps(info))
    image = restore(RestoreConfig(backup, tmp_path / "out")).disks[0].image
    done = subprocess.run(
        ["qemu-img", "info", "--output=json", image], capture_output=True, check=True
    )
    got = json.loads(done.stdout)
    assert (got["cluster-size"], got["virtual-size"]) == (16384, SIZE)
    assert got["format-specific"]["data"]["compat"] == "0.10"


@pytest.mark.parametrize("cluster", [512, 2 * MiB])
def test_qcow2_written_directly_keeps_the_saved_options(
    backup: Path, tmp_path: Path, cluster: int
) -> None:
    """compat 1.1 images are laid out by vbbackup itself: QEMU reads the options back, finds
    the image clean, and the bytes are the point's."""
    data = {"compat": "1.1", "lazy-refcounts": True, "refcount-bits": 16,
            "compression-type": "zstd", "extended-l2": False}  # fmt: skip
    info = {"virtual-size": SIZE, "format": "qcow2", "cluster-size": cluster,
            "format-specific": {"type": "qcow2", "data": data}}  # fmt: skip
    (backup / "vda.virtnbdbackup.2.qcow.json").write_text(json.dumps(info))
    image = restore(RestoreConfig(backup, tmp_path / "out")).disks[0].image
    got = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", image], capture_output=True, check=True
        ).stdout  # fmt: skip
    )
    assert got["cluster-size"] == cluster
    assert got["format-specific"]["data"]["lazy-refcounts"] is True
    assert got["format-specific"]["data"]["compression-type"] == "zstd"
    subprocess.run(["qemu-img", "check", "-q", image], check=True)
    assert read_image(image, "qcow2") == expected(2)


def test_image_named_like_the_source_and_config_adjusted(backup: Path, tmp_path: Path) -> None:
    (backup / "vmconfig.virtnbdbackup.2.xml").write_text(VMCONFIG)
    out = tmp_path / "out"
    result = restore(RestoreConfig(backup, out, adjust_config=True))
    assert result.disks[0].image == out / "system-disk.qcow2"
    assert result.config == out / "restore_src.xml"
    xml = result.config.read_text()
    assert "<uuid>" not in xml
    assert "<name>restore_src</name>" in xml
    assert f'<source file="{out / "system-disk.qcow2"}"/>' in xml
    assert "backingStore" not in xml and "cdrom" not in xml and "install.iso" not in xml
    assert read_image(result.disks[0].image, "qcow2") == expected(2)


def test_plain_restore_copies_the_saved_config(backup: Path, tmp_path: Path) -> None:
    (backup / "vmconfig.virtnbdbackup.1.xml").write_text(VMCONFIG)
    out = tmp_path / "out"
    the_plan = plan(RestoreConfig(backup, out, until="virtnbdbackup.1", fmt="raw"))
    assert [d.image.name for d in the_plan.disks] == ["system-disk.raw"]
    result = restore(RestoreConfig(backup, out, until="virtnbdbackup.1", fmt="raw"), the_plan)
    assert result.config == out / "vmconfig.virtnbdbackup.1.xml"
    assert result.config.read_text() == VMCONFIG


def test_boot_files_restored_and_referenced(backup: Path, tmp_path: Path) -> None:
    xml = VMCONFIG.replace(
        "<os>", "<os><nvram>/var/lib/libvirt/qemu/nvram/src_VARS.fd</nvram>"
    ).replace("</os>", "<kernel>/boot/vmlinuz-test</kernel></os>")
    (backup / "vmconfig.virtnbdbackup.2.xml").write_text(xml)
    (backup / "src_VARS.fd.virtnbdbackup.1").write_bytes(b"old vars")
    (backup / "src_VARS.fd.virtnbdbackup.2").write_bytes(b"vars at 2")
    (backup / "vmlinuz-test.virtnbdbackup.0").write_bytes(b"kernel")
    out = tmp_path / "out"
    result = restore(RestoreConfig(backup, out, adjust_config=True, name="copy1"))
    assert sorted(p.name for p in result.boot_files) == ["src_VARS.fd", "vmlinuz-test"]
    assert (out / "src_VARS.fd").read_bytes() == b"vars at 2"
    assert (out / "vmlinuz-test").read_bytes() == b"kernel"
    text = (out / "copy1.xml").read_text()
    assert f"<nvram>{out / 'src_VARS.fd'}</nvram>" in text
    assert f"<kernel>{out / 'vmlinuz-test'}</kernel>" in text


def test_progress_adds_up_to_the_data(backup: Path, tmp_path: Path) -> None:
    config = RestoreConfig(backup, tmp_path / "out", fmt="raw")
    the_plan = plan(config)
    assert the_plan.data_bytes == 64 * KiB + 300 * KiB + 10240 + 64 * KiB  # the final state
    reported: list[tuple[str, int]] = []
    restore(config, the_plan, lambda disk, done: reported.append((disk.disk, done)))
    assert reported[-1] == ("vda", the_plan.data_bytes)
    assert [done for _, done in reported] == sorted({done for _, done in reported})


def test_preallocated_qcow2(backup: Path, tmp_path: Path) -> None:
    image = restore(RestoreConfig(backup, tmp_path / "out", preallocate=True)).disks[0].image
    done = subprocess.run(
        ["qemu-img", "info", "--output=json", image], capture_output=True, check=True
    )
    assert json.loads(done.stdout)["actual-size"] >= SIZE
    assert read_image(image, "qcow2") == expected(2)


def test_the_plugin_runs_on_our_python_with_a_foreign_python3_first_on_path(
    backup: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nbdkit's embedded Python takes its library from the first python3 on PATH (a pyenv or
    conda one on many admins' machines): the plugin must still load."""
    foreign = tmp_path / "foreign"
    (foreign / "bin").mkdir(parents=True)
    (foreign / "bin" / "python3").write_text("#!/bin/sh\nexit 1\n")
    (foreign / "bin" / "python3").chmod(0o755)
    lib = foreign / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    lib.mkdir(parents=True)
    shutil.copy(os.__file__, lib / "os.py")  # the landmark that makes it a Python's home
    monkeypatch.setenv("PATH", f"{foreign / 'bin'}:{os.environ['PATH']}")
    monkeypatch.delenv("PYTHONHOME", raising=False)
    out = tmp_path / "out.qcow2"
    copy_out(Export(backup, "vda", None, None), out, "qcow2", direct=False)
    assert read_image(out, "qcow2") == expected(2)
