"""RegionMap answers exactly as the whole-disk ExtentMap, whatever the regions."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbbackup.chain.extentmap import ExtentMap, Layer
from vbbackup.chain.regionmap import RegionMap

SIZE = 4096


@st.composite
def layers(draw: st.DrawFn) -> list[Layer]:
    """Files of sorted, disjoint frames (sometimes past the disk's end, as after a shrink)."""
    files: list[Layer] = []
    for _ in range(draw(st.integers(1, 5))):
        cuts = sorted(draw(st.sets(st.integers(0, SIZE + 512), max_size=16)))
        kinds, starts, lengths = bytearray(), array("Q"), array("Q")
        for lo, hi in zip(cuts[::2], cuts[1::2], strict=False):
            if hi > lo and draw(st.booleans()):
                kinds.append(draw(st.integers(0, 1)))
                starts.append(lo)
                lengths.append(hi - lo)
        files.append((kinds, starts, lengths))
    return files


def whole(size: int, files: list[Layer]) -> list[tuple[int, int, int, int]]:
    return list(ExtentMap.build(size, files).segments(0, size))


def merged(segments: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Neighbours from the same frame joined (a region boundary may cut one)."""
    out: list[tuple[int, int, int, int]] = []
    for off, n, layer, frame in segments:
        if out and out[-1][2:] == (layer, frame) and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + n, layer, frame)
        else:
            out.append((off, n, layer, frame))
    return out


@settings(max_examples=300, deadline=None)
@given(files=layers(), region=st.integers(1, SIZE + 100), ranges=st.lists(st.tuples(
    st.integers(0, SIZE), st.integers(0, SIZE)), max_size=4))  # fmt: skip
def test_regions_answer_as_the_whole_map(
    files: list[Layer], region: int, ranges: list[tuple[int, int]]
) -> None:
    lazy = RegionMap(SIZE, files, region=region)
    assert merged(list(lazy.segments(0, SIZE))) == merged(whole(SIZE, files))
    full = ExtentMap.build(SIZE, files)
    for a, b in ranges:
        lo, hi = min(a, b), max(a, b)
        assert lazy.extents(lo, hi - lo) == full.extents(lo, hi - lo)
        assert lazy.extents(lo, hi - lo, limit=2) == full.extents(lo, hi - lo, limit=2)


def test_unsorted_file_makes_one_region() -> None:
    files: list[Layer] = [
        (bytearray([1]), array("Q", [0]), array("Q", [SIZE])),
        (bytearray([0, 1]), array("Q", [2048, 0]), array("Q", [1024, 4096])),
    ]
    lazy = RegionMap(SIZE, files, region=512)
    assert lazy.region == SIZE
    assert list(lazy.segments(0, SIZE)) == whole(SIZE, files)


def test_first_read_builds_one_region() -> None:
    files: list[Layer] = [(bytearray([1, 0]), array("Q", [0, 2048]), array("Q", [2048, 2048]))]
    lazy = RegionMap(SIZE, files, region=1024)
    assert list(lazy.segments(0, 16)) == [(0, 16, 0, 0)]
    assert len(lazy) == 1  # only region 0 built
    assert merged(list(lazy.segments(3000, 100))) == [(3000, 100, -1, 0)]
    assert len(lazy) == 3  # regions 2 and 3 too


def test_outside_the_disk() -> None:
    lazy = RegionMap(SIZE, [(bytearray(), array("Q"), array("Q"))], region=1024)
    with pytest.raises(ValueError, match="outside the disk"):
        list(lazy.segments(SIZE - 1, 2))
