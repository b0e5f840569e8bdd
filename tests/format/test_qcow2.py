"""The one-pass qcow2 layout: QEMU must find the image clean and read the same disk back.

Random disks (size, cluster size, data extents anywhere, unaligned) are written as a sparse
raw file and, through ``Qcow2Layout``, as a qcow2; ``qemu-img check`` must find no error and
``qemu-img compare`` no difference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vbbackup.format.qcow2 import Qcow2Layout, Qcow2Options, cluster_runs

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
KiB = 1024
MiB = 1024 * KiB


@st.composite
def disks(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]], Qcow2Options]:
    cluster = draw(st.sampled_from([512, 4 * KiB, 64 * KiB, 2 * MiB]))
    size = draw(st.integers(1, 48 * MiB)) // 512 * 512 or 512
    cuts = sorted(draw(st.sets(st.integers(0, size), max_size=24)) | {0, size})
    extents = [(a, b - a) for a, b in zip(cuts, cuts[1:], strict=False) if draw(st.booleans())]
    options = Qcow2Options(
        cluster_size=cluster,
        lazy_refcounts=draw(st.booleans()),
        compression_type=draw(st.sampled_from(["zlib", "zstd"])),
    )
    return size, extents, options


def write_pair(
    directory: Path, size: int, extents: list[tuple[int, int]], options: Qcow2Options
) -> tuple[Path, Path]:
    raw, qcow2 = directory / "disk.raw", directory / "disk.qcow2"
    layout = Qcow2Layout(size, cluster_runs(extents, options.cluster_size), options)
    content = {off: os.urandom(n) for off, n in extents}
    with open(raw, "wb") as f:
        f.truncate(size)
        for off, data in content.items():
            f.seek(off)
            f.write(data)
    disk = raw.read_bytes()
    with open(qcow2, "wb") as f:
        f.truncate(layout.file_size)
        for off, n, host in layout.copies(1 * MiB):
            f.seek(host)
            f.write(disk[off : off + n])
        for host, data in layout.metadata():
            f.seek(host)
            f.write(data)
    return raw, qcow2


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(disks())
def test_qemu_finds_the_image_clean_and_equal(
    disk: tuple[int, list[tuple[int, int]], Qcow2Options],
) -> None:
    size, extents, options = disk
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        raw, qcow2 = write_pair(Path(work), size, extents, options)
        check = qemu_img("check", "-f", "qcow2", str(qcow2))
        assert check.returncode == 0, check.stdout + check.stderr
        assert "No errors were found" in check.stdout
        same = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw), str(qcow2))
        assert same.returncode == 0, same.stdout + same.stderr


def test_the_options_are_what_qemu_reads() -> None:
    options = Qcow2Options(cluster_size=4 * KiB, lazy_refcounts=True, compression_type="zstd")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as work:
        _, qcow2 = write_pair(Path(work), 3 * MiB, [(5000, 70000)], options)
        info = qemu_img("info", "--output=json", str(qcow2))
        assert '"cluster-size": 4096' in info.stdout
        assert '"lazy-refcounts": true' in info.stdout
        assert '"compression-type": "zstd"' in info.stdout
        assert '"virtual-size": 3145728' in info.stdout


def test_data_clusters_in_the_disks_order_after_the_metadata() -> None:
    layout = Qcow2Layout(10 * MiB, cluster_runs([(0, 1), (5 * MiB, 70 * KiB)], 64 * KiB),
                         Qcow2Options())  # fmt: skip
    assert layout.runs == [(0, 1), (80, 82)]
    assert layout.host_offset(0) == layout.data_offset
    assert layout.host_offset(5 * MiB + 65 * KiB) == layout.data_offset + 65 * KiB + 64 * KiB
    with pytest.raises(ValueError, match="lies in no allocated cluster"):
        layout.host_offset(64 * KiB)
    assert layout.file_size == layout.data_offset + 3 * 64 * KiB


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="not a power of two"):
        Qcow2Options(cluster_size=3000)
    with pytest.raises(ValueError, match="unknown qcow2 compression type"):
        Qcow2Options(compression_type="lzo")
