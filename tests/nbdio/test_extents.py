"""Extent arithmetic: merging, cutting dirty ranges by allocation, read pieces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vbbackup.nbdio.extents import Extent, changed_extents, data_size, merge_extents, pieces

SIZE = 64


def test_merge_joins_neighbours_of_one_kind_only() -> None:
    got = merge_extents(
        [Extent(0, 4, False), Extent(4, 4, False), Extent(8, 2, True), Extent(10, 0, False)]
    )
    assert got == [Extent(0, 8, False), Extent(8, 2, True)]


def test_changed_range_that_now_reads_as_zero_becomes_zero() -> None:
    allocation = [Extent(0, 10, False), Extent(10, 10, True), Extent(20, 12, False)]
    got = changed_extents([(4, 12), (22, 3)], allocation)
    assert got == [Extent(4, 6, False), Extent(10, 6, True), Extent(22, 3, False)]


def test_pieces_cut_data_extents_only() -> None:
    extents = [Extent(0, 10, False), Extent(10, 100, True), Extent(110, 5, False)]
    assert list(pieces(extents, 4)) == [(0, 4), (4, 4), (8, 2), (110, 4), (114, 1)]
    assert data_size(extents) == 15


@st.composite
def maps(draw: st.DrawFn) -> tuple[list[Extent], list[tuple[int, int]]]:
    cuts = sorted(set(draw(st.lists(st.integers(1, SIZE - 1), max_size=10))))
    bounds = [0, *cuts, SIZE]
    allocation = [
        Extent(a, b - a, draw(st.booleans())) for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    dirty_bits = draw(st.lists(st.booleans(), min_size=SIZE, max_size=SIZE))
    dirty: list[tuple[int, int]] = []
    for i, bit in enumerate(dirty_bits):
        if bit:
            if dirty and sum(dirty[-1]) == i:
                dirty[-1] = (dirty[-1][0], dirty[-1][1] + 1)
            else:
                dirty.append((i, 1))
    return allocation, dirty


@given(maps())
def test_changed_extents_match_a_byte_by_byte_model(
    data: tuple[list[Extent], list[tuple[int, int]]],
) -> None:
    allocation, dirty = data
    zero_at = {i for e in allocation if e.zero for i in range(e.start, e.end)}
    dirty_at = {i for s, n in dirty for i in range(s, s + n)}
    got = changed_extents(dirty, allocation)
    covered = [i for e in got for i in range(e.start, e.end)]
    assert covered == sorted(dirty_at)
    for e in got:
        assert all((i in zero_at) == e.zero for i in range(e.start, e.end))
    assert got == merge_extents(got)
