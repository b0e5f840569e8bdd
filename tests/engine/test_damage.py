"""Never silently wrong: random single-byte flips in payloads and headers of a set.

For every flip, in plain and lz4 sets written by vbbackup's stream writer
(``.chksum`` and ``.sums`` as a backup writes them): ``verify`` fails and
names the file, ``restore`` is exact or fails and leaves no image, and a read
of the whole disk through the nbdkit plugin is exact or EIO (or nbdkit
refuses to serve the set at all).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import nbd
import pytest

from tests.chain.chains import Model, write_chain
from tests.plugin.nbdkit_run import connect
from vbbackup.engine.restore import RestoreConfig, restore
from vbbackup.engine.verify import verify_file
from vbbackup.errors import VbError
from vbbackup.format import HEADER_SIZE, read_index
from vbbackup.fsutil import file_adler32, write_checksum

pytestmark = pytest.mark.integration

KiB, MiB = 1024, 1024 * 1024
SIZE = 2 * MiB
FLIPS = 100  # per variant: 200 in all
READ = 256 * KiB


def _steps(rng: random.Random) -> list[list[tuple[int, bytes] | tuple[int, int]]]:
    full: list[tuple[int, bytes] | tuple[int, int]] = []
    pos = 0
    while pos < SIZE:
        n = min(rng.choice([64, 128, 256]) * KiB, SIZE - pos)
        full.append((pos, rng.randbytes(n // 2) + bytes(n - n // 2)) if rng.random() < 0.7
                    else (pos, n))  # fmt: skip
        pos += n
    incs = []
    for _ in range(2):
        frames: list[tuple[int, bytes] | tuple[int, int]] = []
        for start in sorted(rng.sample(range(0, SIZE // (64 * KiB)), 6)):
            if rng.random() < 0.2:
                frames.append((start * 64 * KiB, 64 * KiB))  # a discard
            else:
                frames.append((start * 64 * KiB, rng.randbytes(64 * KiB)))
        incs.append(frames)
    return [full, *incs]


def _places(path: Path) -> tuple[list[int], list[int]]:
    """Byte positions of headers (frame headers, meta, trailer) and of payloads."""
    with open(path, "rb") as f:
        index = read_index(f, str(path))
    size = path.stat().st_size
    headers = list(range(0, HEADER_SIZE + len(index.meta_json) + 2))
    payloads: list[int] = []
    last = 0
    for frame in index:
        headers += range(frame.pos, frame.pos + HEADER_SIZE)
        if frame.kind == "data":
            payloads += range(frame.payload_pos, frame.payload_pos + frame.payload_size)
            last = frame.payload_pos + frame.payload_size + 2
        else:
            last = frame.pos + HEADER_SIZE
    headers += range(last, size)  # stop frame, and the lz4 trailer with its comp header
    return headers, payloads


def _plugin_outcome(directory: Path, expected: bytes) -> str:
    try:
        with connect({"dir": str(directory)}) as h:
            eio = 0
            for offset in range(0, SIZE, READ):
                try:
                    got = h.pread(READ, offset)
                except nbd.Error as err:
                    assert err.errno == "EIO", err
                    eio += 1
                    continue
                assert got == expected[offset : offset + READ], f"wrong bytes at {offset}"
            return "EIO" if eio else "exact"
    except nbd.Error:  # nbdkit refused the set at start-up (layout check): nothing served
        return "refused"


def _restore_outcome(directory: Path, out: Path, expected: bytes) -> str:
    image = out / "vda.raw"
    image.unlink(missing_ok=True)
    try:
        restore(RestoreConfig(directory, out, fmt="raw", force=True))
    except VbError:
        assert not image.exists(), "a failed restore left a finished-looking image"
        assert not list(out.glob("*.partial")), "a failed restore left a partial"
        return "failed"
    assert image.read_bytes() == expected, "restore exited 0 with a wrong disk"
    return "exact"


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "lz4"])
def test_random_flips_are_never_silent(tmp_path: Path, compressed: bool) -> None:
    rng = random.Random(1234 + compressed)
    directory = tmp_path / "set"
    steps = _steps(rng)
    write_chain(directory, SIZE, steps, compressed=compressed, piece=512 * KiB)
    files = sorted(directory.glob("*.data"))
    for path in files:
        write_checksum(path, file_adler32(path))
    model = Model(SIZE)
    for frames in steps:
        model.apply(frames)
    expected = bytes(model.data)
    places = {path: _places(path) for path in files}
    out = tmp_path / "restored"
    out.mkdir()
    outcomes: Counter[str] = Counter()
    for n in range(FLIPS):
        path = rng.choice(files)
        headers, payloads = places[path]
        position = rng.choice(headers if n % 2 else payloads)
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[position] ^= 1 << rng.randrange(8)
        path.write_bytes(damaged)
        try:
            result = verify_file(path)
            assert not result.sound, f"verify missed a flip at {path.name}:{position}"
            assert all(p.path == path or p.path.name.startswith(path.name)
                       for p in result.problems), result.problems  # fmt: skip
            outcomes["restore " + _restore_outcome(directory, out, expected)] += 1
            outcomes["plugin " + _plugin_outcome(directory, expected)] += 1
        finally:
            path.write_bytes(original)
    print(f"\n{'lz4' if compressed else 'plain'}: {FLIPS} flips: {dict(sorted(outcomes.items()))}")
    # the set, undamaged again, restores exactly
    assert _restore_outcome(directory, out, expected) == "exact"
