"""The backup data path without libvirt: an nbdkit source -> copy_extents -> a stream.

nbdkit's data plugin stands in for QEMU's export (holes and data ranges), the
sink is a StreamWriter over memory; the stream read back (and checked against
its own .sums) must be the source disk, plain and lz4.
"""

from __future__ import annotations

import io
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from vbbackup.engine.diskstream import copy_extents
from vbbackup.format import KIND_DATA, PayloadReader, StreamMeta, StreamWriter, read_index
from vbbackup.nbdio import NbdReader, data_size

pytestmark = pytest.mark.skipif(shutil.which("nbdkit") is None, reason="needs nbdkit")
MiB = 1024 * 1024
SPEC = "@4096 1 2 3 @3000000 ( 0x55 0xaa 7 )*400000 @12582912 ( 9 8 7 6 )*300000"


def _expected() -> bytes:
    disk = bytearray(16 * MiB)
    disk[4096:4099] = b"\x01\x02\x03"
    disk[3000000 : 3000000 + 1200000] = b"\x55\xaa\x07" * 400000
    disk[12582912 : 12582912 + 1200000] = b"\x09\x08\x07\x06" * 300000
    return bytes(disk)


@pytest.mark.parametrize("level", [None, 2], ids=["plain", "lz4"])
def test_a_disk_copied_through_the_data_path_reads_back_whole(level: int | None) -> None:
    command = ["nbdkit", "-s", "--exit-with-parent", "data", SPEC, "size=16M"]
    out = io.BytesIO()
    with NbdReader(command=command, request_size=MiB) as reader, ThreadPoolExecutor(2) as pool:
        allocation, _ = reader.extents()
        meta = StreamMeta(
            virtual_size=reader.size, data_size=data_size(allocation),
            date="2026-12-01T00:00:00", disk_name="vda", disk_format="qcow2",
            checkpoint_name="vbbackup.00000000.0", parent_checkpoint=None,
            incremental=False, compressed=level if level is not None else False,
        )  # fmt: skip
        writer = StreamWriter(out, meta)
        copy_extents(reader, allocation, writer, pool=pool if level else None, level=level or 0,
                     stop=threading.Event(), progress=lambda _: None)  # fmt: skip
        writer.finish()
    raw = out.getvalue()
    index = read_index(io.BytesIO(raw), "vda.full.data")
    payload = PayloadReader(io.BytesIO(raw), index)
    checker = payload.checker(writer.sums("vda.full.data"), "vda.full.data.sums")
    assert payload.damaged_pieces(checker, 10) == []  # the sums match what was written
    disk = bytearray(index.meta.virtual_size)
    for i in range(len(index)):
        if index.kinds[i] == KIND_DATA:
            start = index.starts[i]
            disk[start : start + index.lengths[i]] = payload.read(i, 0, index.lengths[i])
    assert bytes(disk) == _expected()
    assert index.data_size < 4 * MiB  # the holes stayed holes
