"""Child processes: run a tool with a clear error, start a daemon and stop it later.

Daemons (nbdkit, nbdfuse) run in their own session with stdin, stdout and stderr
away from the caller (a log file), so a caller capturing vbmount's output never
waits for them. Readiness is the daemon's pid file; whether one still runs is read
from /proc, because PID 1 here does not reap orphans (an exited daemon may linger
as a zombie).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from vbbackup.errors import MountError

_POLL = 0.02
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def run_tool(args: Sequence[str | os.PathLike[str]], *, what: str | None = None) -> str:
    """Run a command to completion; its stdout, or MountError with its last stderr line."""
    argv = [os.fspath(a) for a in args]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise MountError(f"{argv[0]} is not installed") from None
    if done.returncode != 0:
        raise MountError(f"{what or argv[0]} failed: {last_line(done.stderr or done.stdout)}")
    return done.stdout


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def spawn_daemon(
    args: Sequence[str | os.PathLike[str]],
    *,
    pidfile: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> int:
    """Start a program that stays in the foreground (nbdfuse, nbdkit -f) as our child, in
    its own session with output in `log`; return its pid once it wrote `pidfile`.

    If it exits first, raise MountError with the last line it logged.
    """
    argv = [os.fspath(a) for a in args]
    pidfile.unlink(missing_ok=True)
    with open(log, "ab") as log_file:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                env=dict(env) if env is not None else None,
            )
        except FileNotFoundError:
            raise MountError(f"{argv[0]} is not installed") from None
    deadline = time.monotonic() + timeout
    while not _pid_written(pidfile):
        if proc.poll() is not None:
            raise MountError(f"{Path(argv[0]).name} failed: {last_line(read_log(log))}")
        if time.monotonic() > deadline:
            terminate(proc.pid)
            raise MountError(f"{Path(argv[0]).name} did not become ready in {timeout:.0f} s")
        time.sleep(_POLL)
    # The daemon outlives us: mark the Popen as done so it does not warn when collected.
    proc.returncode = 0
    return proc.pid


def start_forking_daemon(
    args: Sequence[str | os.PathLike[str]],
    *,
    pidfile: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> int:
    """Start a daemon that forks into the background itself (nbdkit without --foreground).

    The command returns once it listens (its exit status says whether it could);
    the background child then writes `pidfile`. nbdkit in the foreground ties
    itself to its parent (PR_SET_PDEATHSIG), so it would die with vbmount.
    """
    argv = [os.fspath(a) for a in args]
    pidfile.unlink(missing_ok=True)
    with open(log, "ab") as log_file:
        try:
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True, check=False, timeout=timeout,
                env=dict(env) if env is not None else None,
            )  # fmt: skip
        except FileNotFoundError:
            raise MountError(f"{argv[0]} is not installed") from None
    if done.returncode != 0:
        raise MountError(f"{Path(argv[0]).name} failed: {last_line(read_log(log))}")
    deadline = time.monotonic() + timeout
    while not _pid_written(pidfile):
        if time.monotonic() > deadline:
            raise MountError(f"{Path(argv[0]).name} wrote no pid file {pidfile}")
        time.sleep(_POLL)
    return int(pidfile.read_text().strip())


def _pid_written(pidfile: Path) -> bool:
    try:
        return pidfile.read_text().strip().isdigit()
    except FileNotFoundError:
        return False


def read_log(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def running(pid: int, marker: str | None = None) -> bool:
    """Whether `pid` runs (not a zombie) and, if given, has `marker` in its command line."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    if state in ("Z", "X"):
        return False
    return marker is None or marker.encode() in cmdline


def wait_gone(pid: int, marker: str | None = None, timeout: float = STOP_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while running(pid, marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    _reap(pid)
    return True


def terminate(pid: int, marker: str | None = None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (then SIGKILL) a daemon we started, if it still runs; wait until it is gone.

    `marker` (its socket path, say) guards against signalling a reused pid.
    """
    if not running(pid, marker):
        _reap(pid)
        return
    _signal(pid, signal.SIGTERM)
    if not wait_gone(pid, marker, timeout):
        _signal(pid, signal.SIGKILL)
        if not wait_gone(pid, marker, timeout):
            raise MountError(f"process {pid} does not stop")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status when the daemon is our own child (same process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
