"""What backup, restore and verify show on stderr: info lines, one bar per disk, summaries.

On a terminal the bars sit below the scrolling info lines and are redrawn in
place (ANSI: cursor up N lines, clear to the end of the screen), at most five
times a second::

    vda: full, 12.0 MiB data, file vda.full.data 12.0 MiB, 0.4 s, 30.0 MiB/s
    vdb [##########..............]  41%  3.3 MiB/8.0 MiB  21.0 MiB/s
    vdc [###.....................]  12%  1.0 MiB/8.0 MiB  9.5 MiB/s

Not a terminal, ``--no-progress`` or ``-q``: no bar and no control character.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from vbbackup.engine.backup import DiskResult, Reporter
from vbbackup.engine.info import human_size

REDRAW_SECONDS = 0.2
BAR_WIDTH = 24


def bar_line(target: str, done: int, total: int, seconds: float) -> str:
    """One disk's bar: ``vda [#####.....]  41%  3.3 MiB/8.0 MiB  21.0 MiB/s``."""
    fraction = min(1.0, done / total) if total else 1.0
    filled = int(BAR_WIDTH * fraction)
    rate = done / seconds if seconds > 0 else 0.0
    return (
        f"{target} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {int(100 * fraction):3d}%  "
        f"{human_size(done)}/{human_size(total)}  {human_size(int(rate))}/s"
    )


class ProgressBars:
    """The one progress renderer: info lines that scroll, one bar per label below them.

    Backup (per disk), restore (per disk) and verify (one bar for the bytes read)
    all draw through it; thread-safe, as backup workers report from their threads.
    """

    def __init__(self, enabled: bool, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.enabled = enabled and not quiet and self.stream.isatty()
        self._lock = threading.Lock()
        self._bars: dict[str, tuple[int, int, float]] = {}  # label: done, total, started
        self._drawn_lines = 0
        self._drawn_at = 0.0

    def start(self, label: str, total: int) -> None:
        with self._lock:
            self._bars[label] = (0, total, time.monotonic())

    def update(self, label: str, done: int) -> None:
        """``done`` bytes of ``label`` so far (absolute)."""
        if not self.enabled:
            return
        with self._lock:
            if label not in self._bars:
                self._bars[label] = (0, done, time.monotonic())
            _, total, started = self._bars[label]
            self._bars[label] = (done, total, started)
            now = time.monotonic()
            if now - self._drawn_at >= REDRAW_SECONDS:
                self._drawn_at = now
                self._redraw("")

    def finish(self, label: str, line: str | None = None) -> None:
        """Drop the bar; ``line`` (its summary) scrolls up where the bars were."""
        with self._lock:
            self._bars.pop(label, None)
        if line is not None:
            self.say(line)
        elif self.enabled:
            with self._lock:
                self._redraw("")

    def say(self, line: str) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.enabled:
                self._redraw(line + "\n")
            else:
                self._write(line + "\n")

    def clear(self) -> None:
        """Erase every bar (the command is over, or was interrupted)."""
        with self._lock:
            self._bars.clear()
            if self.enabled and self._drawn_lines:
                self._redraw("")

    def _redraw(self, above: str) -> None:
        """Erase the bars, print ``above`` where they were, draw the bars again (lock held)."""
        erase = f"\x1b[{self._drawn_lines}F\x1b[J" if self._drawn_lines else ""
        now = time.monotonic()
        bars = [bar_line(t, done, total, now - started)
                for t, (done, total, started) in self._bars.items()]  # fmt: skip
        self._write(erase + above + "".join(f"{b}\n" for b in bars))
        self._drawn_lines = len(bars)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class CliReporter(Reporter):
    """A backup run's report, drawn by ``ProgressBars``."""

    def __init__(self, quiet: bool, progress: bool, stream: TextIO | None = None) -> None:
        super().__init__()
        self.bars = ProgressBars(progress, stream, quiet)
        self.stream = self.bars.stream
        self.quiet = quiet
        self.progress = self.bars.enabled

    def info(self, message: str) -> None:
        super().info(message)
        self.bars.say(message)

    def say_warning(self, line: str) -> None:
        self.bars.say(line)

    def disk_started(self, target: str, total: int) -> None:
        self.bars.start(target, total)

    def disk_progress(self, target: str, done: int) -> None:
        self.bars.update(target, done)

    def disk_done(self, result: DiskResult) -> None:
        self.bars.finish(
            result.target,
            f"{result.target}: {result.level}, {human_size(result.data_bytes)} data, "
            f"file {Path(result.path).name} {human_size(result.file_bytes)}, "
            f"{result.seconds:.1f} s, {human_size(int(result.throughput))}/s",
        )
