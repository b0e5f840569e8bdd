"""Progress bars: one per disk on a terminal, redrawn in place; nothing otherwise."""

from __future__ import annotations

import io
import re

import pytest

from vbbackup.cli import progress
from vbbackup.cli.progress import CliReporter, bar_line
from vbbackup.engine.backup import DiskResult

MiB = 1024 * 1024
RESULT = DiskResult("vda", "full", "/set/vda.full.data", 8 * MiB, 0, 8 * MiB, 2.0)
SUMMARY = "vda: full, 8.0 MiB data, file vda.full.data 8.0 MiB, 2.0 s, 4.0 MiB/s\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _two_disk_run(reporter: CliReporter) -> None:
    reporter.info("deleted the old chain's checkpoints virtnbdbackup.0")
    reporter.disk_started("vda", 8 * MiB)
    reporter.disk_started("vdb", 4 * MiB)
    reporter.disk_progress("vda", 2 * MiB)
    reporter.disk_progress("vdb", MiB)
    reporter.disk_done(RESULT)


@pytest.fixture(autouse=True)
def _no_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)


def test_bar_line() -> None:
    line = bar_line("vdb", 2 * MiB, 8 * MiB, 1.0)
    assert line == f"vdb [{'#' * 6}{'.' * 18}]  25%  2.0 MiB/8.0 MiB  2.0 MiB/s"
    assert bar_line("vdc", 0, 0, 0.0).startswith(f"vdc [{'#' * 24}] 100%")


def test_a_terminal_gets_one_bar_per_disk_redrawn_in_place() -> None:
    tty = Terminal()
    _two_disk_run(CliReporter(quiet=False, progress=True, stream=tty))
    frames = tty.getvalue().split("\x1b[2F\x1b[J")  # up two lines, clear below: the bars
    # info line, then both bars; vdb moved; vda's summary where the bars were, vdb's bar below
    assert len(frames) == 3
    assert re.fullmatch(
        r"deleted the old chain's checkpoints virtnbdbackup\.0\n"
        r"vda \[#{6}\.{18}\]  25%  2\.0 MiB/8\.0 MiB  .*/s\nvdb \[\.{24}\]   0%.*\n",
        frames[0],
    )
    assert re.fullmatch(r"vda \[#{6}.*\nvdb \[#{6}\.{18}\]  25%  1\.0 MiB/4\.0 MiB.*\n", frames[1])
    assert re.fullmatch(re.escape(SUMMARY) + r"vdb \[#{6}\.{18}\]  25%.*\n", frames[2])


@pytest.mark.parametrize(
    ("stream", "show"),
    [(io.StringIO(), True), (Terminal(), False)],
    ids=["not a terminal", "--no-progress"],
)
def test_no_bar_off_a_terminal_or_with_no_progress(stream: io.StringIO, show: bool) -> None:
    _two_disk_run(CliReporter(quiet=False, progress=show, stream=stream))
    assert stream.getvalue() == "deleted the old chain's checkpoints virtnbdbackup.0\n" + SUMMARY


def test_quiet_prints_nothing() -> None:
    tty = Terminal()
    _two_disk_run(CliReporter(quiet=True, progress=True, stream=tty))
    assert tty.getvalue() == ""


def test_restore_and_verify_draw_through_the_same_bars() -> None:
    from vbbackup.cli.progress import ProgressBars
    from vbbackup.cli.restore import _bytes_progress

    tty = Terminal()
    bars = ProgressBars(True, tty)
    update = _bytes_progress(bars, "verify", 8 * MiB)
    update(2 * MiB)
    update(2 * MiB)
    bars.say("ok   /set/vda.full.data")
    bars.clear()
    text = tty.getvalue()
    assert re.search(r"verify \[#{6}\.{18}\]  25%  2\.0 MiB/8\.0 MiB", text)
    assert re.search(r"verify \[#{12}\.{12}\]  50%  4\.0 MiB/8\.0 MiB", text)
    assert "ok   /set/vda.full.data\n" in text
    assert text.endswith("\x1b[1F\x1b[J")  # the bar is gone at the end
    plain = io.StringIO()
    quiet = ProgressBars(True, plain)  # not a terminal: lines only, no control character
    _bytes_progress(quiet, "verify", MiB)(MiB)
    quiet.say("done")
    assert plain.getvalue() == "done\n"
