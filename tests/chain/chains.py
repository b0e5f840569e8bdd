"""Write synthetic backup sets (full + incrementals) and the model they encode.

A step is a list of frames ``(start, bytes)`` for data or ``(start, length)``
for zero; ``Model`` applies the same steps to a bytearray, which is the
overlay rule in its plainest form.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from vbbackup.format import StreamMeta, StreamWriter
from vbbackup.fsutil import write_sums

Frame = tuple[int, bytes] | tuple[int, int]


def cp_name(k: int) -> str:
    return f"virtnbdbackup.{k}"


def write_stream(
    path: Path,
    size: int,
    frames: Sequence[Frame],
    *,
    checkpoint: str,
    parent: str | None,
    compressed: bool = False,
    piece: int = 0,
    sums: bool = True,
) -> None:
    """One stream file; with ``piece``, data goes in lz4 frames of that size."""
    meta = StreamMeta(
        virtual_size=size,
        data_size=sum(len(p) for _, p in frames if isinstance(p, bytes)),
        date="2026-11-26T06:00:00",
        disk_name=path.name.split(".")[0],
        disk_format="qcow2",
        checkpoint_name=checkpoint,
        parent_checkpoint=parent,
        incremental=parent is not None,
        compressed=2 if compressed else False,
    )
    with open(path, "wb") as f:
        w = StreamWriter(f, meta)
        for start, what in frames:
            if isinstance(what, int):
                w.write_zero(start, what)
                continue
            w.begin_data(start, len(what))
            step = piece or len(what)
            for pos in range(0, len(what), step):
                w.write_chunk(what[pos : pos + step])
            w.end_data()
        w.finish()
    if sums:
        write_sums(path, w.sums(path.name), overwrite=True)


def write_chain(
    directory: Path,
    size: int,
    steps: Sequence[Sequence[Frame]],
    *,
    disk: str = "vda",
    compressed: bool = False,
    piece: int = 0,
    cpt: bool = True,
    sums: bool = True,
) -> list[str]:
    """Full (step 0) + incrementals as virtnbdbackup names them; checkpoint names."""
    directory.mkdir(parents=True, exist_ok=True)
    names = [cp_name(k) for k in range(len(steps))]
    for k, frames in enumerate(steps):
        name = f"{disk}.full.data" if k == 0 else f"{disk}.inc.{names[k]}.data"
        write_stream(
            directory / name,
            size,
            frames,
            checkpoint=names[k],
            parent=names[k - 1] if k else None,
            compressed=compressed,
            piece=piece,
            sums=sums,
        )
    if cpt:
        (directory / "vm.cpt").write_text(json.dumps(names))
    return names


class Model:
    """The disk as a bytearray plus which bytes were last written as zero frames."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.zero = bytearray(b"\x01" * size)

    def apply(self, frames: Sequence[Frame]) -> None:
        for start, what in frames:
            if isinstance(what, int):
                self.data[start : start + what] = bytes(what)
                self.zero[start : start + what] = b"\x01" * what
            else:
                self.data[start : start + len(what)] = what
                self.zero[start : start + len(what)] = bytes(len(what))

    def extents(self) -> list[tuple[int, int, bool]]:
        out: list[tuple[int, int, bool]] = []
        for pos, flag in enumerate(self.zero):
            if out and out[-1][2] == bool(flag):
                out[-1] = (out[-1][0], out[-1][1] + 1, bool(flag))
            else:
                out.append((pos, 1, bool(flag)))
        return out
