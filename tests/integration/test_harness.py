"""The harness itself on the real stack: live writes land in the disks, a pull backup job
exports exactly the expected bytes, and the dirty bitmap of an incremental job shows a write."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.harness import DiskSpec, MiB, Partition, make_fs_image, pull_backup
from tests.harness.fixtures import require

pytestmark = pytest.mark.integration


@contextmanager
def nbd_client(socket: Path, export: str, meta_context: str | None = None) -> Iterator[Any]:
    require("libnbd_python")
    import nbd

    h = nbd.NBD()
    h.set_export_name(export)
    if meta_context:
        h.add_meta_context(meta_context)
    h.connect_unix(str(socket))
    try:
        yield h
    finally:
        h.shutdown()


def read_all(h: Any) -> bytes:
    size = h.get_size()
    step = 4 * MiB
    return b"".join(h.pread(min(step, size - off), off) for off in range(0, size, step))


def dirty_ranges(h: Any, context: str) -> list[tuple[int, int]]:
    """(offset, length) of the extents flagged dirty in `context`, over the whole export."""
    found: list[tuple[int, int]] = []
    ends: list[int] = []  # where each block_status reply stopped
    size, offset = h.get_size(), 0
    while offset < size:

        def extent(ctx: str, start: int, entries: list[int], err: Any) -> int:
            if ctx == context:
                pos = start
                for length, flags in zip(entries[::2], entries[1::2], strict=True):
                    if flags & 1:
                        found.append((pos, length))
                    pos += length
                ends.append(pos)
            return 0

        h.block_status(min(size - offset, 1 << 30), offset, extent)
        offset = ends[-1]
    return found


def test_full_pull_backup_reads_expected_bytes(make_vm: Any) -> None:
    vm = make_vm(disks=[DiskSpec("vda", 32 * MiB), DiskSpec("vdb", 16 * MiB)])
    vm.write("vda", 0, b"first sector")
    vm.write("vda", 3, os.urandom(5000))  # qemu-io needs no alignment
    vm.write_pattern("vda", 5 * MiB + 7, 3 * MiB, 0xAB)
    vm.discard("vda", 6 * MiB, 64 * 1024)
    vm.write("vdb", 16 * MiB - 512, b"\x5a" * 512)
    expected = {t: vm.expected(t).read_bytes() for t in vm.targets}
    vm.write("vda", 0, b"after the snapshot")  # leaves the snapshots alone

    with pull_backup(vm, checkpoint="cp0") as job:
        for target in ("vda", "vdb"):
            with nbd_client(job.socket, job.exports[target]) as h:
                assert h.get_size() == vm.disk_size(target)
                got = read_all(h)
            assert got[:18] == (b"after the snapshot" if target == "vda" else bytes(18))
            assert got[18:] == expected[target][18:], target
    assert vm.dom.jobInfo()[0] == 0  # the job ended


def test_incremental_job_exports_dirty_bitmap(make_vm: Any) -> None:
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)], cdrom=True)  # the cdrom is no backup disk
    vm.write_pattern("vda", 0, MiB, 1)
    with pull_backup(vm, checkpoint="cp0"):
        pass
    vm.write_pattern("vda", 8 * MiB, 4096, 2)
    with (
        pull_backup(vm, checkpoint="cp1", incremental="cp0") as job,
        nbd_client(job.socket, "vda", job.bitmaps["vda"]) as h,
    ):
        dirty = dirty_ranges(h, job.bitmaps["vda"])
        assert h.pread(4096, 8 * MiB) == b"\x02" * 4096
    assert len(dirty) == 1
    offset, length = dirty[0]
    assert offset <= 8 * MiB < 8 * MiB + 4096 <= offset + length <= 8 * MiB + 64 * 1024 * 4
    names = sorted(cp.getName() for cp in vm.dom.listAllCheckpoints())
    assert names == ["cp0", "cp1"]


def test_disk_from_fs_image_and_raw_disk(make_vm: Any, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    placed = make_fs_image(
        image, 24 * MiB, [Partition(16 * MiB, "ext4", files={"etc/fstab": b"# test\n"})]
    )
    assert placed == [(MiB, 16 * MiB)]
    vm = make_vm(disks=[DiskSpec("vda", None, image=image), DiskSpec("vdb", 8 * MiB, fmt="raw")])
    vm.write("vdb", 100, b"raw disk")
    with pull_backup(vm, checkpoint="cp0") as job:  # raw vdb: backed up, no bitmap
        with nbd_client(job.socket, "vda") as h:
            assert read_all(h) == image.read_bytes()
        with nbd_client(job.socket, "vdb") as h:
            assert read_all(h) == vm.expected("vdb").read_bytes()
    vm.close()
    assert not vm.dir.exists()
    assert vm.name not in [d.name() for d in vm.conn.listAllDomains()]
