"""The CLIs on damaged and odd directories: one line and a non-zero exit, never a traceback.

Hypothesis builds a backup directory from good and broken pieces (streams cut
short or full of garbage, checkpoint lists that are not JSON, not UTF-8 or not
names, garbage side files and commit records, a file where a directory goes)
and runs the reading and set-changing commands on it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chain.chains import write_chain
from vbbackup.cli import main
from vbmount.cli import main as vbmount_main

SIZE = 256 * 1024
STEPS = [[(0, b"a" * 8192), (8192, SIZE - 8192)], [(4096, b"b" * 4096)]]

GARBAGE = st.one_of(
    st.just(b""), st.just(b"\xff\xfe\x00"), st.just(b"[1, 2]"), st.just(b'["x", 3]'),
    st.just(b"{}"), st.just(b"<domain>"), st.binary(max_size=200),
)  # fmt: skip
PIECES = st.fixed_dictionaries(
    {},
    optional={
        "vm.cpt": GARBAGE,
        "vda.full.data": st.one_of(GARBAGE, st.just("cut")),
        "vda.inc.virtnbdbackup.1.data": st.one_of(GARBAGE, st.just("cut")),
        "vda.full.data.sums": GARBAGE,
        "vda.full.data.chksum": GARBAGE,
        ".vbbackup-pending": GARBAGE,
        "vmconfig.virtnbdbackup.1.xml": GARBAGE,
        "checkpoints": st.just("a file, not a directory"),
        "vdb.copy.data": GARBAGE,
    },
)
COMMANDS = st.sampled_from(
    [
        ("vbbackup", ["info", "{dir}"]),
        ("vbbackup", ["info", "{dir}", "--json"]),
        ("vbbackup", ["verify", "{dir}", "--no-progress"]),
        ("vbbackup", ["verify", "{dir}", "--add-sums", "--no-progress"]),
        ("vbbackup", ["restore", "{dir}", "-o", "{out}", "--format", "raw", "--no-progress"]),
        ("vbbackup", ["restore", "{dir}", "-o", "{out}", "--adjust-config", "--no-progress"]),
        ("vbbackup", ["consolidate", "{dir}"]),
        ("vbmount", ["ls", "{dir}", "--partitions"]),
    ]
)


def _build(directory: Path, pieces: dict[str, bytes | str]) -> None:
    write_chain(directory, SIZE, STEPS)
    for name, content in pieces.items():
        path = directory / name
        if name == "checkpoints":
            path.write_text(str(content))
        elif content == "cut":
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())


@settings(
    max_examples=int(os.environ.get("VBFUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,  # the same examples in every run: CI never fails by chance
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(PIECES, COMMANDS, st.sampled_from(["set", "missing", "a-file"]))
def test_no_traceback_on_any_directory(
    pieces: dict[str, bytes | str], command: tuple[str, list[str]], where: str
) -> None:
    with tempfile.TemporaryDirectory(prefix="vbfuzz-") as tmp:
        root = Path(tmp)
        directory = root / "set"
        if where == "set":
            _build(directory, pieces)
        elif where == "a-file":
            directory.write_bytes(b"not a directory")
        prog, args = command
        argv = [a.format(dir=directory, out=root / "out") for a in args]
        result = CliRunner().invoke(main if prog == "vbbackup" else vbmount_main, argv,
                                    prog_name=prog)  # fmt: skip
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{prog} {argv}: traceback") from result.exception
        assert "Traceback" not in result.output
        if result.exit_code != 0:
            last = result.output.strip().splitlines()[-1]
            assert last.startswith(f"{prog}: error: "), (argv, result.output)
            assert result.exit_code in (1, 2, 3, 4, 5, 8, 9, 10), (argv, result.output)
