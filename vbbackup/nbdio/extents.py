"""Extent arithmetic for a backup: pure functions over ``(start, length, zero)``.

A full backup writes every extent of ``base:allocation`` (data or zero); an
incremental writes only what the dirty bitmap marks, and of that whatever now
reads as zero becomes a zero frame (a discarded range must not come back)::

    allocation  |==data==|..zero..|====data====|
    dirty       |   XXXXXXXXXX          XXX    |
    changed     |   [dat][zero]         [dat]  |
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Extent:
    """A range of the disk that reads as data, or as zeroes when ``zero``."""

    start: int
    length: int
    zero: bool

    @property
    def end(self) -> int:
        return self.start + self.length


def merge_extents(extents: Iterable[Extent]) -> list[Extent]:
    """Join neighbours of the same kind, so that reads and frames get as large as possible."""
    merged: list[Extent] = []
    for ext in extents:
        if ext.length <= 0:
            continue
        last = merged[-1] if merged else None
        if last is not None and last.end == ext.start and last.zero == ext.zero:
            merged[-1] = Extent(last.start, last.length + ext.length, last.zero)
        else:
            merged.append(ext)
    return merged


def changed_extents(dirty: Iterable[tuple[int, int]], allocation: Iterable[Extent]) -> list[Extent]:
    """The dirty ranges, each cut where ``allocation`` switches between data and zero.

    Both inputs are sorted and non-overlapping; ``allocation`` must cover every
    dirty range.
    """
    alloc = iter(allocation)
    current = next(alloc, None)
    out: list[Extent] = []
    for start, length in dirty:
        pos, end = start, start + length
        while pos < end:
            while current is not None and current.end <= pos:
                current = next(alloc, None)
            if current is None or current.start > pos:
                raise ValueError(f"allocation map does not cover offset {pos}")
            stop = min(end, current.end)
            out.append(Extent(pos, stop - pos, current.zero))
            pos = stop
    return merge_extents(out)


def data_size(extents: Iterable[Extent]) -> int:
    """Bytes that will be written as data frames (the stream's ``dataSize``)."""
    return sum(e.length for e in extents if not e.zero)


def pieces(extents: Iterable[Extent], size: int) -> Iterator[tuple[int, int]]:
    """The data extents cut into read requests of at most ``size`` bytes, in order."""
    if size <= 0:
        raise ValueError("piece size must be positive")
    for ext in extents:
        if ext.zero:
            continue
        for pos in range(ext.start, ext.end, size):
            yield pos, min(size, ext.end - pos)
