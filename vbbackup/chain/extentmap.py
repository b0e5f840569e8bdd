"""The merged extent map of a point in time: which file holds each byte.

The disk is cut into contiguous segments, kept as three parallel arrays::

    starts  0        4096      65536     1048576      (size)
    layers  0        -1        2         0
    frames  0        0         17        3

Segment i covers [starts[i], starts[i+1]) (the last one ends at ``size``);
``layers[i]`` is the file (0 = full, 1.. = incrementals) whose frame
``frames[i]`` holds its bytes, or ``ZERO`` (-1) when it reads as zeroes.
Overlaying a later file replaces whatever it covers, so the map answers
every lookup with one binary search, whatever the chain's length.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence
from typing import Final

ZERO: Final = -1


class ExtentMap:
    """Sorted segments covering ``[0, size)``; pure, immutable once built."""

    __slots__ = ("frames", "layers", "size", "starts")

    def __init__(self, size: int) -> None:
        self.size = size
        self.starts = array("Q", [0] if size else [])
        self.layers = array("i", [ZERO] if size else [])
        self.frames = array("I", [0] if size else [])

    def __len__(self) -> int:
        return len(self.starts)

    def overlay(
        self,
        layer: int,
        kinds: Sequence[int],
        starts: Sequence[int],
        lengths: Sequence[int],
    ) -> None:
        """Lay one file's frames over the map (a later frame wins).

        ``kinds[i]`` is true for a data frame, false for a zero frame. Frames
        are normally sorted and disjoint; a frame that goes back is applied in
        a new pass, so file order decides even then.
        """
        first = 0
        while first < len(starts):
            first = self._overlay_run(layer, kinds, starts, lengths, first)

    def _overlay_run(
        self,
        layer: int,
        kinds: Sequence[int],
        starts: Sequence[int],
        lengths: Sequence[int],
        first: int,
    ) -> int:
        """Merge sorted, disjoint frames from ``first`` on; return where that stops."""
        size = self.size
        bs, bl, bf = self.starts, self.layers, self.frames
        ns, nl, nf = array("Q"), array("i"), array("I")
        pos = 0  # everything before pos is in the new arrays

        def copy_base(a: int, b: int) -> None:
            """Copy the old map's segments over [a, b) into the new arrays."""
            j = bisect_right(bs, a) - 1
            k = bisect_left(bs, b, j + 1)
            if not (nl and nl[-1] == ZERO and bl[j] == ZERO):
                ns.append(a)
                nl.append(bl[j])
                nf.append(bf[j])
            if k > j + 1:
                ns.extend(bs[j + 1 : k])
                nl.extend(bl[j + 1 : k])
                nf.extend(bf[j + 1 : k])

        i = first
        n = len(starts)
        while i < n:
            start = starts[i]
            if start < pos:
                break  # goes back: the next pass applies it
            end = min(start + lengths[i], size)
            if start >= end:
                i += 1
                continue
            if start > pos:
                copy_base(pos, start)
            if kinds[i]:
                ns.append(start)
                nl.append(layer)
                nf.append(i)
            elif not (nl and nl[-1] == ZERO):
                ns.append(start)
                nl.append(ZERO)
                nf.append(0)
            pos = end
            i += 1
        if pos < size:
            copy_base(pos, size)
        self.starts, self.layers, self.frames = ns, nl, nf
        return i

    def segment(self, offset: int) -> int:
        """Index of the segment holding byte ``offset``."""
        return bisect_right(self.starts, offset) - 1

    def segments(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """``(offset, length, layer, frame)`` pieces covering the range, in order."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range [{offset}, +{length}) outside the disk ({self.size} bytes)")
        end = offset + length
        starts, layers, frames = self.starts, self.layers, self.frames
        last = len(starts) - 1
        i = bisect_right(starts, offset) - 1
        pos = offset
        while pos < end:
            seg_end = starts[i + 1] if i < last else self.size
            stop = min(seg_end, end)
            yield pos, stop - pos, layers[i], frames[i]
            pos = stop
            i += 1

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]:
        """``(offset, length, is_zero)`` runs over the range, neighbours merged.

        With ``limit``, stop after that many runs (the caller asks again from
        where the answer ends, as NBD block status allows).
        """
        out: list[tuple[int, int, bool]] = []
        for off, n, layer, _ in self.segments(offset, length):
            zero = layer == ZERO
            if out and out[-1][2] == zero:
                prev = out[-1]
                out[-1] = (prev[0], prev[1] + n, zero)
                continue
            if limit is not None and len(out) >= limit:
                break
            out.append((off, n, zero))
        return out
