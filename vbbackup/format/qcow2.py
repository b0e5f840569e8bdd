"""The metadata of a new, fully written qcow2 v3 image, laid out in one pass.

Restore knows every allocated cluster before it writes a byte (the point's
extent map), so the image can be laid out at once instead of through QEMU's
allocator: header, refcount table, refcount blocks, L1 table, L2 tables,
then the data clusters in the disk's order (as ``qemu-img convert`` places
them). Every cluster is referenced once (refcount 1, the COPIED flag set),
no snapshots, no backing file, no compressed or zero clusters: a cluster the
layout does not allocate reads as zeroes. The result is what QEMU's own spec
(docs/interop/qcow2.txt) calls a clean image; restore runs ``qemu-img
check`` on it before it is renamed into place.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
VERSION = 3
HEADER_LENGTH = 112  # the v3 header with the compression type byte, as QEMU 7.2 writes it
REFCOUNT_ORDER = 4  # 16-bit refcounts, qemu-img's default
COPIED = 1 << 63  # "refcount is exactly one": QEMU may write in place
LAZY_REFCOUNTS = 1  # compatible feature bit 0
COMPRESSION_TYPE_BIT = 1 << 3  # incompatible feature bit 3: header byte 104 is not zlib
COMPRESSION_TYPES = {"zlib": 0, "zstd": 1}
MIN_CLUSTER, MAX_CLUSTER = 512, 2 * 1024 * 1024


@dataclass(frozen=True)
class Qcow2Options:
    """What a restored qcow2 keeps of the original's options (the ones we can write)."""

    cluster_size: int = 65536
    lazy_refcounts: bool = False
    compression_type: str = "zlib"

    def __post_init__(self) -> None:
        cs = self.cluster_size
        if cs < MIN_CLUSTER or cs > MAX_CLUSTER or cs & (cs - 1):
            raise ValueError(f"qcow2 cluster size {cs} is not a power of two in 512..2M")
        if self.compression_type not in COMPRESSION_TYPES:
            raise ValueError(f"unknown qcow2 compression type {self.compression_type!r}")


def cluster_runs(extents: Iterable[tuple[int, int]], cluster_size: int) -> list[tuple[int, int]]:
    """Sorted, merged ``(first, end)`` cluster-index runs touched by ``(offset, length)``
    data extents (sorted by offset, as a view's extent map gives them)."""
    runs: list[list[int]] = []
    for offset, length in extents:
        if length <= 0:
            continue
        first = offset // cluster_size
        end = -(-(offset + length) // cluster_size)
        if runs and first <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([first, end])
    return [(a, b) for a, b in runs]


class Qcow2Layout:
    """Where every cluster of the new image lies, and the metadata bytes that say so."""

    def __init__(self, size: int, runs: list[tuple[int, int]], options: Qcow2Options) -> None:
        self.size = size
        self.options = options
        cs = self.cluster_size = options.cluster_size
        self.cluster_bits = cs.bit_length() - 1
        self.l2_entries = cs // 8
        guest_clusters = -(-size // cs)
        if runs and (runs[0][0] < 0 or runs[-1][1] > guest_clusters):
            raise ValueError("a data run lies outside the disk")
        self.runs = runs
        self.l1_size = max(1, -(-guest_clusters // self.l2_entries))
        self.l1_clusters = -(-self.l1_size * 8 // cs)
        self.data_clusters = sum(b - a for a, b in runs)
        per = self.l2_entries
        self.l2_tables = sorted({i for a, b in runs for i in range(a // per, (b - 1) // per + 1)})
        fixed = 1 + self.l1_clusters + len(self.l2_tables) + self.data_clusters
        per_block = cs * 8 // (1 << REFCOUNT_ORDER)
        blocks = table = 0
        while True:  # the refcount structures count themselves
            total = fixed + blocks + table
            need_blocks = -(-total // per_block)
            need_table = -(-need_blocks * 8 // cs)
            if (need_blocks, need_table) == (blocks, table):
                break
            blocks, table = need_blocks, need_table
        self.refcount_table_clusters = table
        self.refcount_blocks = blocks
        self.total_clusters = fixed + blocks + table
        self.refcount_table_offset = cs
        self.refcount_blocks_offset = self.refcount_table_offset + table * cs
        self.l1_offset = self.refcount_blocks_offset + blocks * cs
        self.l2_offset = self.l1_offset + self.l1_clusters * cs
        self.data_offset = self.l2_offset + len(self.l2_tables) * cs
        self.file_size = self.total_clusters * cs
        # host cluster of the first cluster of each run, for host_offset()
        self._run_firsts = [a for a, _ in runs]
        self._run_hosts: list[int] = []
        at = self.data_offset
        for a, b in runs:
            self._run_hosts.append(at)
            at += (b - a) * cs

    def host_offset(self, guest: int) -> int:
        """The file offset holding disk offset ``guest`` (in an allocated cluster)."""
        cluster = guest // self.cluster_size
        i = bisect_right(self._run_firsts, cluster) - 1
        if i < 0 or cluster >= self.runs[i][1]:
            raise ValueError(f"disk offset {guest} lies in no allocated cluster")
        return self._run_hosts[i] + guest - self.runs[i][0] * self.cluster_size

    def copies(self, piece: int) -> Iterator[tuple[int, int, int]]:
        """``(disk offset, length, file offset)`` pieces of at most ``piece`` bytes that fill
        every allocated cluster from the disk (the part past the disk's end stays zero)."""
        cs = self.cluster_size
        for (a, b), host in zip(self.runs, self._run_hosts, strict=True):
            start, end = a * cs, min(b * cs, self.size)
            for off in range(start, end, piece):
                n = min(piece, end - off)
                yield off, n, host + off - start

    def header(self) -> bytes:
        """Cluster 0: the header, the end of the header extensions, zero padding."""
        o = self.options
        incompatible = COMPRESSION_TYPE_BIT if o.compression_type != "zlib" else 0
        head = struct.pack(
            ">4sIQIIQIIQQIIQQQQII",
            MAGIC,
            VERSION,
            0,  # backing file offset
            0,  # backing file name length
            self.cluster_bits,
            self.size,
            0,  # no encryption
            self.l1_size,
            self.l1_offset,
            self.refcount_table_offset,
            self.refcount_table_clusters,
            0,  # snapshots
            0,
            incompatible,
            LAZY_REFCOUNTS if o.lazy_refcounts else 0,
            0,  # autoclear features
            REFCOUNT_ORDER,
            HEADER_LENGTH,
        )
        head += bytes([COMPRESSION_TYPES[o.compression_type]]) + bytes(7)
        assert len(head) == HEADER_LENGTH
        head += struct.pack(">II", 0, 0)  # end of header extensions
        return head + bytes(self.cluster_size - len(head))

    def refcount_table(self) -> bytes:
        cs = self.cluster_size
        table = bytearray(self.refcount_table_clusters * cs)
        for i in range(self.refcount_blocks):
            struct.pack_into(">Q", table, i * 8, self.refcount_blocks_offset + i * cs)
        return bytes(table)

    def refcount_block_data(self) -> bytes:
        """Every refcount block: 1 for each cluster of the file, 0 beyond."""
        width = 1 << (REFCOUNT_ORDER - 3)
        blocks = bytearray(self.refcount_blocks * self.cluster_size)
        blocks[: self.total_clusters * width] = b"\x00\x01" * self.total_clusters
        return bytes(blocks)

    def l1_table(self) -> bytes:
        table = bytearray(self.l1_clusters * self.cluster_size)
        for n, index in enumerate(self.l2_tables):
            pointer = (self.l2_offset + n * self.cluster_size) | COPIED
            struct.pack_into(">Q", table, index * 8, pointer)
        return bytes(table)

    def l2_table_data(self) -> bytes:
        """Every L2 table, in the order the L1 table points at them."""
        cs, entries = self.cluster_size, self.l2_entries
        data = bytearray(len(self.l2_tables) * cs)
        slot = {index: n for n, index in enumerate(self.l2_tables)}
        for (a, b), host in zip(self.runs, self._run_hosts, strict=True):
            cluster = a
            while cluster < b:  # the part of the run one L2 table maps
                table, first = divmod(cluster, entries)
                end = min(b, (table + 1) * entries)
                at = host + (cluster - a) * cs
                pointers = array("Q", range(at | COPIED, (at + (end - cluster) * cs) | COPIED, cs))
                if sys.byteorder == "little":
                    pointers.byteswap()
                pos = slot[table] * cs + first * 8
                data[pos : pos + 8 * (end - cluster)] = pointers.tobytes()
                cluster = end
        return bytes(data)

    def metadata(self) -> Iterator[tuple[int, bytes]]:
        """``(file offset, bytes)`` of every metadata structure."""
        yield 0, self.header()
        yield self.refcount_table_offset, self.refcount_table()
        yield self.refcount_blocks_offset, self.refcount_block_data()
        yield self.l1_offset, self.l1_table()
        if self.l2_tables:
            yield self.l2_offset, self.l2_table_data()
