"""verify and the readers judge a set alike (issue: one chain model).

Hypothesis writes a chain (full + incrementals), damages it the ways sets get
damaged (a file missing, renamed, extra or cut short, a meta that is garbage or
names the wrong checkpoint, parent or disk, the checkpoint list reordered; a disk resized
within a chain is legal, see test_backupset), and checks: what ``verify``
calls sound opens at every point and reads exactly what the model says; what
it calls unsound is refused by the reader for at least one point of the chain.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.chain.chains import Model, cp_name, write_chain, write_stream
from vbbackup.chain import BackupSet, open_view
from vbbackup.engine.verify import VerifyConfig, verify
from vbbackup.errors import ChainError, StreamFormatError

SIZE = 64 * 1024
DAMAGES = st.sampled_from(
    [
        "none", "drop-inc", "drop-full", "rename-inc", "extra-inc", "full-with-parent",
        "wrong-checkpoint", "wrong-parent", "wrong-disk", "reorder-cpt", "truncate-inc",
        "bad-meta",
    ]
)  # fmt: skip


def _steps(n: int, seed: int) -> list[list[tuple[int, bytes] | tuple[int, int]]]:
    steps: list[list[tuple[int, bytes] | tuple[int, int]]] = [
        [(0, bytes([seed % 256]) * 4096), (4096, SIZE - 4096)]
    ]
    for k in range(1, n):
        steps.append([((k * 4096) % SIZE, bytes([(seed + k) % 256]) * 4096)])
    return steps


def _damage(directory: Path, damage: str, n: int) -> None:
    inc = directory / f"vda.inc.{cp_name(n - 1)}.data"
    if damage == "drop-inc" and n > 2:
        (directory / f"vda.inc.{cp_name(1)}.data").unlink()
    elif damage == "drop-full":
        (directory / "vda.full.data").unlink()
    elif damage == "rename-inc" and n > 1:
        inc.rename(directory / "vda.inc.virtnbdbackup.99.data")
    elif damage == "extra-inc":
        write_stream(directory / "vda.inc.virtnbdbackup.77.data", SIZE, [(0, b"x" * 512)],
                     checkpoint="virtnbdbackup.77", parent=cp_name(0))  # fmt: skip
    elif damage == "full-with-parent":
        write_stream(directory / "vda.full.data", SIZE, [(0, SIZE)], checkpoint=cp_name(0),
                     parent="virtnbdbackup.42")  # fmt: skip
    elif damage == "wrong-checkpoint" and n > 1:
        write_stream(inc, SIZE, [(0, b"y" * 512)], checkpoint="virtnbdbackup.55",
                     parent=cp_name(n - 2))  # fmt: skip
    elif damage == "wrong-parent" and n > 2:
        write_stream(inc, SIZE, [(0, b"y" * 512)], checkpoint=cp_name(n - 1),
                     parent=cp_name(0) if n > 2 else None)  # fmt: skip
    elif damage == "wrong-disk" and n > 1:
        meta_disk = directory / "vdb.tmp"
        write_stream(meta_disk, SIZE, [(0, b"z" * 512)], checkpoint=cp_name(n - 1),
                     parent=cp_name(n - 2))  # fmt: skip
        meta_disk.rename(inc)  # a stream of disk vdb under vda's name
    elif damage == "truncate-inc" and n > 1:  # a file of the wrong size
        inc.write_bytes(inc.read_bytes()[:-30])
    elif damage == "bad-meta" and n > 1:  # the meta JSON is no longer JSON
        data = bytearray(inc.read_bytes())
        data[40:46] = b"\x00garb"
        inc.write_bytes(bytes(data))
    elif damage == "reorder-cpt" and n > 2:
        names = [cp_name(k) for k in range(n)]
        names[1], names[2] = names[2], names[1]
        (directory / "vm.cpt").write_text(json.dumps(names))


def _reader_verdict(directory: Path, n: int) -> tuple[bool, list[bytes | None], list[str]]:
    """(every point of the chain opens, the bytes of each point or None, the reader's errors)."""
    try:
        backup = BackupSet(directory)
        points = [p.name for p in backup.points("vda")]
    except (ChainError, StreamFormatError) as err:
        return False, [], [str(err)]
    got: list[bytes | None] = []
    errors = []
    for k in range(n):
        try:
            with open_view(directory, "vda", cp_name(k)) as view:
                got.append(view.read(0, view.size))
        except (ChainError, StreamFormatError) as err:
            errors.append(str(err))
            got.append(None)
    return not errors and all(cp_name(k) in points for k in range(n)), got, errors


ALL = ("none", "drop-inc", "drop-full", "rename-inc", "extra-inc", "full-with-parent",
       "wrong-checkpoint", "wrong-parent", "wrong-disk", "reorder-cpt", "truncate-inc",
       "bad-meta")  # fmt: skip


def _with_every_damage(test):  # type: ignore[no-untyped-def]
    for damage in ALL:  # each damage at least once, on a chain long enough for it
        test = example(3, 7, damage)(test)
    return test


@_with_every_damage
@settings(max_examples=120, deadline=None)
@given(st.integers(1, 4), st.integers(0, 255), DAMAGES)
def test_verify_and_the_reader_agree(n: int, seed: int, damage: str) -> None:
    with tempfile.TemporaryDirectory(prefix="vbmodel-") as tmp:
        directory = Path(tmp) / "set"
        steps = _steps(n, seed)
        write_chain(directory, SIZE, steps)
        _damage(directory, damage, n)
        try:
            report = verify(VerifyConfig(directory))
            sound = report.sound
            problems = [str(p) for p in report.problems]
        except ChainError as err:  # no set at all
            sound, problems = False, [str(err)]
        opens, got, errors = _reader_verdict(directory, n)
        if sound:
            assert opens, (damage, "verify calls it sound, the reader refuses it")
            model = Model(SIZE)
            for k, frames in enumerate(steps):
                model.apply(frames)
                assert got[k] == bytes(model.data), (damage, k)
        else:
            assert not opens, (damage, "verify finds problems the reader ignores", problems)
            # the same reason: a broken link is the same rule's words, a missing file its name
            for error in errors:
                link = re.match(r"chain does not link: (\S+): (.*)$", error)
                if link:
                    assert f"{link[1]}: {link[2]}" in problems, (damage, error, problems)
                missing = re.match(r"missing file in the chain: (\S+) ", error)
                if missing:
                    assert any(p.startswith(missing[1]) for p in problems), (damage, error)
