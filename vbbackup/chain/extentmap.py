"""The merged extent map of a point in time: which file holds each byte.

The disk is cut into contiguous segments, kept as two parallel arrays::

    starts  0        4096      65536     1048576      (size)
    codes   0:0      ZERO      2:17      0:3          (layer:frame)

Segment i covers [starts[i], starts[i+1]) (the last one ends at ``size``).
Its code packs the file (``layer``: 0 = full, 1.. = incrementals) and the
frame of that file holding its bytes as ``layer << 40 | frame``; ``ZERO``
(-1) means it reads as zeroes. Overlaying a later file replaces whatever it
covers, so the map answers every lookup with one binary search, whatever
the chain's length. Two arrays, 16 bytes a segment.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

ZERO: Final = -1
_FRAME_BITS: Final = 40
_FRAME_MASK: Final = (1 << _FRAME_BITS) - 1

# One file's frames: kinds (true = data, false = zero), starts, lengths.
Layer = tuple[Sequence[int], Sequence[int], Sequence[int]]
_Arrays = tuple["array[int]", "array[int]"]


class ExtentMap:
    """Sorted segments covering ``[0, size)``; pure, immutable once built."""

    __slots__ = ("codes", "size", "starts")

    def __init__(self, size: int, starts: array[int], codes: array[int]) -> None:
        self.size = size
        self.starts = starts
        self.codes = codes

    @classmethod
    def build(cls, size: int, files: Iterable[Layer]) -> ExtentMap:
        """Overlay the files' frames in order (a later frame wins).

        Frames of a file are normally sorted and disjoint; a frame that goes
        back starts a new pass, so file order decides even then.
        """
        segs: _Arrays = (array("Q", [0] if size else []), array("q", [ZERO] if size else []))
        for layer, (kinds, starts, lengths) in enumerate(files):
            first = 0
            while first < len(starts):
                segs, first = _overlay_run(segs, size, layer, kinds, starts, lengths, first)
        return cls(size, *segs)

    def __len__(self) -> int:
        return len(self.starts)

    def segment(self, offset: int) -> int:
        """Index of the segment holding byte ``offset``."""
        return bisect_right(self.starts, offset) - 1

    def segments(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """``(offset, length, layer, frame)`` pieces covering the range, in order.

        ``layer`` is ``ZERO`` for zeroes.
        """
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range [{offset}, +{length}) outside the disk ({self.size} bytes)")
        end = offset + length
        starts, codes = self.starts, self.codes
        last = len(starts) - 1
        i = bisect_right(starts, offset) - 1
        pos = offset
        while pos < end:
            seg_end = starts[i + 1] if i < last else self.size
            stop = min(seg_end, end)
            code = codes[i]
            if code == ZERO:
                yield pos, stop - pos, ZERO, 0
            else:
                yield pos, stop - pos, code >> _FRAME_BITS, code & _FRAME_MASK
            pos = stop
            i += 1

    def within(self, offset: int, length: int) -> tuple[int, int] | None:
        """``(layer, frame)`` when the whole range lies in one segment, else None (a read's
        common case, without ``segments``' generator)."""
        i = bisect_right(self.starts, offset) - 1
        end = self.starts[i + 1] if i + 1 < len(self.starts) else self.size
        if offset < 0 or offset + length > end:
            return None
        code = self.codes[i]
        return (ZERO, 0) if code == ZERO else (code >> _FRAME_BITS, code & _FRAME_MASK)

    def extents(
        self, offset: int, length: int, limit: int | None = None
    ) -> list[tuple[int, int, bool]]:
        """``(offset, length, is_zero)`` runs over the range, neighbours merged.

        With ``limit``, stop after that many runs (the caller asks again from
        where the answer ends, as NBD block status allows).
        """
        return merge_runs(self.segments(offset, length), limit)


def merge_runs(
    segments: Iterable[tuple[int, int, int, int]], limit: int | None
) -> list[tuple[int, int, bool]]:
    """``(offset, length, is_zero)`` runs of consecutive segments, neighbours merged."""
    out: list[tuple[int, int, bool]] = []
    for off, n, layer, _ in segments:
        zero = layer == ZERO
        if out and out[-1][2] == zero:
            prev = out[-1]
            out[-1] = (prev[0], prev[1] + n, zero)
            continue
        if limit is not None and len(out) >= limit:
            break
        out.append((off, n, zero))
    return out


def _overlay_run(
    base: _Arrays,
    size: int,
    layer: int,
    kinds: Sequence[int],
    starts: Sequence[int],
    lengths: Sequence[int],
    first: int,
) -> tuple[_Arrays, int]:
    """Merge sorted, disjoint frames from ``first`` on into new arrays.

    Returns them and the frame where a pass must stop (one that goes back).
    The old map's segments between frames are copied by slices; adjacent
    zero segments are merged on the way. This loop is the cost of opening a
    long chain, hence the local names.
    """
    bs, bc = base
    n_base = len(bs)
    ns, nc = array("Q"), array("q")
    s_add, c_add = ns.append, nc.append
    tag = layer << _FRAME_BITS
    pos = 0  # everything before pos is in the new arrays
    k = 0  # old segments before k start before pos
    last_zero = False  # the newest segment reads as zeroes
    stop = len(starts)
    frames = zip(range(first, stop), starts[first:], lengths[first:], kinds[first:], strict=True)
    for i, start, length, data in frames:
        if start < pos:
            stop = i  # goes back: the next pass applies it
            break
        if start > size:  # the disk shrank since this file
            start = size
        if start > pos:  # the old map shows through over [pos, start)
            # usually pos lies in segment k-1 and start a few segments later
            j = k - 1 if k and (k == n_base or bs[k] > pos) else bisect_right(bs, pos, k) - 1
            hi = j + 65
            if hi >= n_base or bs[hi] >= start:
                k = bisect_left(bs, start, j + 1, min(hi, n_base))
            else:
                k = bisect_left(bs, start, hi)
            code = bc[j]
            if not (last_zero and code == ZERO):
                s_add(pos)
                c_add(code)
            if k > j + 1:
                ns.extend(bs[j + 1 : k])
                nc.extend(bc[j + 1 : k])
                code = bc[k - 1]
            last_zero = code == ZERO
            pos = start
        end = start + length
        if end > size:
            end = size
        if start < end:
            if data:
                s_add(start)
                c_add(tag | i)
                last_zero = False
            elif not last_zero:
                s_add(start)
                c_add(ZERO)
                last_zero = True
            pos = end
    if pos < size:
        j = bisect_right(bs, pos, k) - 1
        if not (last_zero and bc[j] == ZERO):
            s_add(pos)
            c_add(bc[j])
        ns.extend(bs[j + 1 :])
        nc.extend(bc[j + 1 :])
    return (ns, nc), stop
