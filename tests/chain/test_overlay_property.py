"""The overlay rule, checked against a bytearray model on random chains."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chain.chains import Frame, Model, write_chain
from vbbackup.chain import open_view

SIZE = 16 * 1024
BLOCK = 512


@st.composite
def steps(draw: st.DrawFn) -> list[list[Frame]]:
    """A chain: random writes and discards per step, frames in stream order."""
    result: list[list[Frame]] = []
    for _ in range(draw(st.integers(1, 5))):
        frames: list[Frame] = []
        for _ in range(draw(st.integers(0, 8))):
            first = draw(st.integers(0, SIZE // BLOCK - 1))
            count = draw(st.integers(1, min(8, SIZE // BLOCK - first)))
            start, length = first * BLOCK, count * BLOCK
            if draw(st.booleans()):
                fill = draw(st.binary(min_size=1, max_size=8))
                frames.append((start, (fill * length)[:length]))
            else:
                frames.append((start, length))
        if draw(st.booleans()):  # real streams are sorted; unsorted ones still overlay in order
            frames.sort(key=lambda f: f[0])
        result.append(frames)
    return result


@settings(max_examples=150, deadline=None)
@given(
    chain=steps(),
    compressed=st.booleans(),
    piece=st.sampled_from([0, 700, 4096]),
    ranges=st.lists(st.tuples(st.integers(0, SIZE), st.integers(0, SIZE)), max_size=6),
)
def test_every_point_matches_the_model(
    chain: list[list[Frame]],
    compressed: bool,
    piece: int,
    ranges: list[tuple[int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        names = write_chain(Path(tmp), SIZE, chain, compressed=compressed, piece=piece)
        model = Model(SIZE)
        for k, frames in enumerate(chain):
            model.apply(frames)
            with open_view(tmp, until=names[k]) as view:
                assert view.size == SIZE
                assert view.read(0, SIZE) == model.data
                assert view.extents(0, SIZE) == model.extents()
                for a, b in ranges:
                    lo, hi = min(a, b), max(a, b)
                    assert view.read(lo, hi - lo) == model.data[lo:hi]
                    runs = view.extents(lo, hi - lo)
                    assert sum(n for _, n, _ in runs) == hi - lo
                    for off, n, zero in runs:
                        assert set(model.zero[off : off + n]) <= {int(zero)}
