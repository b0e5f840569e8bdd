"""``vbbackup full|inc|diff|copy|auto DOMAIN``: the backup commands."""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from vbbackup.cli.common import connect_option
from vbbackup.cli.ops_options import backup_options, ops_options
from vbbackup.cli.progress import CliReporter
from vbbackup.engine.backup import BackupConfig, run_backup
from vbbackup.errors import UsageError
from vbbackup.virt.agent import consistency_line

DEFAULT_ROOT = Path("/var/lib/vbbackup")
_HELP = {
    "full": "Start a new chain: every allocated range of every disk, checkpoint virtnbdbackup.0.",
    "inc": "Changes since the chain's last checkpoint; creates the next checkpoint.",
    "diff": "Changes since the chain's last checkpoint, without advancing the chain.",
    "copy": "Full data of every disk; creates and touches no checkpoint.",
    "auto": "`full` into an empty or new directory, else `inc`.",
}


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every backup level shares."""
    options = [
        click.argument("domain"),
        click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
                     help="Backup directory (one chain); default /var/lib/vbbackup/DOMAIN."),
        connect_option(),
        click.option("-i", "--include", multiple=True, metavar="DISK",
                     help="Back up only this disk (target name, e.g. vda; repeatable)."),
        click.option("-x", "--exclude", multiple=True, metavar="DISK",
                     help="Leave this disk out (target name; repeatable)."),
        click.option("--compress", type=click.IntRange(1, 16), is_flag=False, flag_value=2,
                     default=None, metavar="[LEVEL]",
                     help="lz4-compress the streams (level 1-16, default 2)."),
        click.option("--workers", type=click.IntRange(1, 64),
                     help="Disks backed up in parallel (default: one per disk)."),
        click.option("--scratchdir", type=click.Path(file_okay=False, path_type=Path),
                     default=Path("/var/tmp"), show_default=True,
                     help="Directory for the job's NBD socket and fleecing scratch files."),
        click.option("--no-sparse-detection", is_flag=True,
                     help="inc/diff: write every changed range as data, without zero check."),
        click.option("--raw", is_flag=True,
                     help="Include raw and direct-attached disks (copied whole in full/copy)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print a machine-readable summary on stdout."),
        click.option("--strict", is_flag=True,
                     help="Exit 2 when the backup finished with warnings (a disk skipped, "
                     "no freeze, a fallback to a new chain)."),
        click.option("--syslog", is_flag=True,
                     help="Also send the run's log to syslog (/dev/log)."),
        click.option("-q", "--quiet", is_flag=True, help="Print errors only."),
        click.option("-v", "--verbose", is_flag=True, help="Also print the run's log lines."),
        click.option("--no-progress", is_flag=True,
                     help="No progress bars (there are none either when stderr is no terminal)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _make_command(level: str) -> click.Command:
    @click.command(level, help=_HELP[level])
    @_options
    @ops_options
    def command(domain: str, output: Path | None, uri: str, include: tuple[str, ...],
                exclude: tuple[str, ...], compress: int | None, workers: int | None,
                scratchdir: Path, no_sparse_detection: bool, raw: bool, as_json: bool,
                strict: bool, syslog: bool, quiet: bool, verbose: bool, no_progress: bool,
                **ops: Any) -> None:  # fmt: skip
        config = BackupConfig(
            domain=domain,
            level=level,
            output=output or DEFAULT_ROOT / domain,
            uri=uri,
            include=include,
            exclude=exclude,
            compress=compress,
            workers=workers,
            scratch_dir=scratchdir,
            sparse_detection=not no_sparse_detection,
            raw=raw,
            ops=backup_options(**ops),
        )
        reporter = CliReporter(quiet or verbose, not no_progress)
        with _log_handlers(syslog, verbose):
            result = run_backup(config, reporter)
        if result.consistency is not None:
            reporter.info(consistency_line(result.consistency))
        if as_json:
            click.echo(json.dumps(result.to_dict(), indent=2))
        elif result.estimate is not None:  # the command's result: stdout, even with -q
            click.echo(result.estimate.line())
        if strict and result.warnings:
            n = len(result.warnings)
            click.echo(f"vbbackup: finished with {n} warning{'s' if n > 1 else ''} (--strict: "
                       "exit 2)", err=True)  # fmt: skip
            raise SystemExit(2)

    return command


@contextlib.contextmanager
def _log_handlers(syslog: bool, verbose: bool) -> Iterator[None]:
    """The run's log also to syslog (``--syslog``, as ``vbbackup[pid]``) and to stderr
    (``-v``), for the run only: removed again, so a caller running several commands in one
    process (tests, a scheduler) does not keep writing into closed streams."""
    handlers: list[logging.Handler] = []
    if syslog:
        handlers.append(_syslog_handler())
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[-1].setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("vbbackup")
    old_level = logger.level
    if handlers:
        logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(old_level)


def _syslog_handler() -> logging.Handler:
    address = os.environ.get("VBBACKUP_SYSLOG_SOCKET", "/dev/log")
    try:  # the handler itself stays silent when nothing listens (it retries per record)
        if not stat.S_ISSOCK(os.stat(address).st_mode):
            raise UsageError(f"--syslog: {address} is not a socket (no syslog daemon?)")
        handler = logging.handlers.SysLogHandler(address=address)
    except OSError as err:
        raise UsageError(f"--syslog: cannot reach syslog at {address}: {err.strerror}") from None
    handler.setFormatter(logging.Formatter(f"vbbackup[{os.getpid()}]: %(message)s"))
    return handler


full_command = _make_command("full")
inc_command = _make_command("inc")
diff_command = _make_command("diff")
copy_command = _make_command("copy")
auto_command = _make_command("auto")
BACKUP_COMMANDS = (full_command, inc_command, diff_command, copy_command, auto_command)
