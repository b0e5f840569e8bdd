"""The merged extent map, built one region of the disk at a time, on first use.

Overlaying a long chain costs Python work per frame (about 2 us an
incremental frame), so a chain of a million frames would make the first
read wait a second for the whole map. Cut the disk into regions of about
``FRAMES_PER_REGION`` frames; the first read of a region overlays only the
frames that fall into it (each file's frames clipped to the region)::

    disk     |  region 0  |  region 1  |  region 2  |
    full     [====][==][======][===][====][==][=====]
    inc 1       [=]        [=]   [=]        [=]
    built:   |   yes      |     -      |     -      |   (after a read at 0)

A region's map is an ``ExtentMap`` with offsets from the region's start and
frame numbers from the first frame of each file in the region. Files whose
frames are not sorted and disjoint (never written by a backup, but legal)
make the whole disk one region: the overlay rule then needs file order only.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import add, le, sub
from typing import Final

from vbbackup.chain.extentmap import ZERO, ExtentMap, Layer, merge_runs

FRAMES_PER_REGION: Final = 65536
_MIN_REGION: Final = 1 << 20


class RegionMap:
    """``segments``/``extents`` of ``ExtentMap``, each region built when first touched.

    Thread-safe: one lock guards building; a built region never changes.
    """

    def __init__(self, size: int, files: Sequence[Layer], region: int | None = None) -> None:
        self.size = size
        self._files = list(files)
        self._ends = [array("Q", map(add, starts, lengths)) for _, starts, lengths in self._files]
        if region is None:
            frames = sum(len(starts) for _, starts, _ in self._files)
            region = max(_MIN_REGION, -(-size // max(1, -(-frames // FRAMES_PER_REGION))))
        if not all(map(_sorted, self._files, self._ends)):
            region = max(size, 1)
        self.region = region
        self._maps: list[tuple[ExtentMap, list[int]] | None] = [None] * -(-size // region)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Segments in the regions built so far."""
        return sum(len(built[0]) for built in self._maps if built is not None)

    def _region(self, r: int) -> tuple[ExtentMap, list[int]]:
        built = self._maps[r]
        if built is None:
            with self._lock:
                built = self._maps[r]
                if built is None:
                    built = self._maps[r] = self._build(r)
        return built

    def _build(self, r: int) -> tuple[ExtentMap, list[int]]:
        """The region's map, and the first frame of each file inside it."""
        lo_off = r * self.region
        hi_off = min(lo_off + self.region, self.size)
        clipped: list[Layer] = []
        firsts: list[int] = []
        for (kinds, starts, lengths), ends in zip(self._files, self._ends, strict=True):
            if len(self._maps) == 1:  # one region: the files as they are
                clipped.append((kinds, starts, lengths))
                firsts.append(0)
                continue
            first = bisect_right(ends, lo_off)
            stop = bisect_left(starts, hi_off, first)
            firsts.append(first)
            if first >= stop:
                clipped.append((b"", (), ()))
                continue
            part_starts = array("Q", starts[first:stop])
            part_ends = array("Q", ends[first:stop])
            part_starts[0] = max(part_starts[0], lo_off)
            part_ends[-1] = min(part_ends[-1], hi_off)
            part_lengths = array("Q", map(sub, part_ends, part_starts))
            part_starts = array("Q", map(sub, part_starts, repeat(lo_off, len(part_starts))))
            clipped.append((kinds[first:stop], part_starts, part_lengths))
        return ExtentMap.build(hi_off - lo_off, clipped), firsts

    def segments(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """``(offset, length, layer, frame)`` pieces covering the range, in order."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range [{offset}, +{length}) outside the disk ({self.size} bytes)")
        end = offset + length
        pos = offset
        while pos < end:
            r = pos // self.region
            base = r * self.region
            stop = min(end, base + self.region)
            emap, firsts = self._region(r)
            for off, n, layer, frame in emap.segments(pos - base, stop - pos):
                if layer == ZERO:
                    yield off + base, n, ZERO, 0
                else:
                    yield off + base, n, layer, frame + firsts[layer]
            pos = stop

    def within(self, offset: int, length: int) -> tuple[int, int] | None:
        """``(layer, frame)`` when ``[offset, +length)`` lies in one segment, else None."""
        if offset < 0 or length <= 0 or offset + length > self.size:
            return None
        r = offset // self.region
        base = r * self.region
        if offset + length > base + self.region:
            return None
        emap, firsts = self._region(r)
        hit = emap.within(offset - base, length)
        if hit is None or hit[0] == ZERO:
            return hit
        return hit[0], hit[1] + firsts[hit[0]]

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]:
        """``(offset, length, is_zero)`` runs over the range, neighbours merged."""
        return merge_runs(self.segments(offset, length), limit)


def _sorted(layer: Layer, ends: array[int]) -> bool:
    """True if the file's frames are sorted and disjoint (as every backup writes them)."""
    starts = layer[1]
    return all(map(le, ends[:-1], starts[1:]))
