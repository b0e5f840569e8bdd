"""Extents in whole sectors for the nbdkit plugin (pure; no nbdkit import).

qemu reads an export in 512-byte sectors and takes a sector for a hole when
the extent at its start says so, so data that begins mid-sector would be lost
(``qemu-img convert`` of a set with unaligned ranges). Rounding the extents,
rather than advertising a 512-byte minimum block size, keeps unaligned
requests from other clients (nbdsh, libnbd's strict mode) working::

    view     hole [0, 1000)   data [1000, 1100)   hole [1100, 5000)   data ...
    served   hole [0, 512)    data [512, 1536)    hole [1536, 4608)   data [4608, ...
"""

from __future__ import annotations

from collections.abc import Sequence

SECTOR = 512
Run = tuple[int, int, bool]  # offset, length, is_zero (the chain view's extents)


def whole_sectors(offset: int, runs: Sequence[Run]) -> list[Run]:
    """Holes shrink to whole sectors, data grows over the bytes they give up.

    ``runs`` start at ``offset`` and follow each other; so do the runs returned,
    which may end earlier (a trailing part-sector hole), never later.
    """
    out: list[Run] = []
    for start, length, is_zero in runs:
        end = start + length
        if is_zero:
            start, end = -(-start // SECTOR) * SECTOR, end // SECTOR * SECTOR
            if end <= start:
                continue
        done = out[-1][0] + out[-1][1] if out else offset
        data_end = start if is_zero else end
        if data_end > done:
            if out and not out[-1][2]:
                done = out.pop()[0]
            out.append((done, data_end - done, False))
        if is_zero:
            out.append((start, end - start, True))
    return out or [(offset, sum(n for _, n, _ in runs), False)]
