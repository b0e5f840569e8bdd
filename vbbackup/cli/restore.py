"""``vbbackup restore``, ``info`` and ``verify``: reading a backup set back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click

from vbbackup.chain import BackupSet
from vbbackup.cli.common import connect_option
from vbbackup.cli.progress import ProgressBars
from vbbackup.engine.fsck import chosen_points, fsck_point
from vbbackup.engine.info import InfoConfig, human_size, info, render
from vbbackup.engine.liverestore import LiveConfig, live_restore, resume
from vbbackup.engine.restore import DiskPlan, RestoreConfig, plan, restore
from vbbackup.engine.verify import VerifyConfig, planned_bytes, verify
from vbbackup.engine.verify import add_sums as add_sums_to
from vbbackup.errors import ChainError, UsageError, VerifyError
from vbmount.bootcheck import BootCheckConfig, boot_check


def _restore_progress(bars: ProgressBars, plans: tuple[DiskPlan, ...]) -> Callable[..., None]:
    """restore's progress callback: one bar per disk, sized by its data."""
    for disk in plans:
        bars.start(disk.disk, disk.data_bytes)

    def update(disk: DiskPlan, done: int) -> None:
        bars.update(disk.disk, done)

    return update


def _bytes_progress(bars: ProgressBars, label: str, total: int) -> Callable[[int], None]:
    """verify's progress callback: increments of bytes read, one bar."""
    bars.start(label, total)
    state = {"done": 0}

    def update(n: int) -> None:
        state["done"] += n
        bars.update(label, state["done"])

    return update


_backup_dir = click.argument(
    "directory", type=click.Path(file_okay=False, path_type=Path), metavar="DIR"
)


@click.command("restore")
@click.argument("directory", required=False, type=click.Path(file_okay=False, path_type=Path),
                metavar="DIR")  # fmt: skip
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the images (and domain XML) into; created if missing.",
)
@click.option("--until", metavar="CHECKPOINT", help="Point in time (default: the newest).")
@click.option("--disk", "disks", multiple=True, metavar="TARGET", help="Only this disk (repeat).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["qcow2", "raw"]),
    help="Image format (default: the disk's format at backup time).",
)
@click.option("--preallocate", is_flag=True, help="Reserve the images' whole space (falloc).")
@click.option(
    "--sequence",
    metavar="FILE,FILE...",
    help="Restore exactly these data files of one disk, in this order "
    "(virtnbdrestore's -s), instead of --until.",
)
@click.option("--target", "targets", multiple=True, metavar="DISK=DEVICE",
              help="Write DISK over this existing block device (raw LV, partition; at least "
              "the disk's size) instead of an image in -o (repeat).")  # fmt: skip
@click.option(
    "--compress",
    is_flag=True,
    help="Write the qcow2 image with compressed clusters (qemu-img convert -c).",
)
@click.option(
    "--adjust-config",
    is_flag=True,
    help="Write the domain XML rewritten for the restored images (new name, no UUID).",
)
@click.option("--name", help="Name of the adjusted domain (default: restore_<name>; "
              "with --live: the original name).")  # fmt: skip
@click.option(
    "--define",
    is_flag=True,
    help="Define the adjusted domain in libvirt (implies --adjust-config).",
)
@click.option("--live", is_flag=True,
              help="Start the VM at once on qcow2 images over the backup and copy the data "
              "into them while it runs (docs/instant-recovery.md).")  # fmt: skip
@click.option(
    "--resume",
    "resume_name",
    metavar="NAME",
    help="With --live: finish the live restore of NAME that was interrupted.",
)
@click.option(
    "--restart",
    is_flag=True,
    help="With --resume: restart a VM whose backup server died (a cold boot).",
)
@click.option("--bandwidth", type=click.FloatRange(min=0, min_open=True), metavar="MIB_PER_S",
              help="With --live: limit each disk's copy to this many MiB/s.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="With --live: print the result as JSON.")
@connect_option("libvirt URI for --define and --live")
@click.option("--force", is_flag=True, help="Overwrite existing images and files.")
@click.option("--no-progress", is_flag=True, help="No progress display.")
def restore_command(
    directory: Path | None,
    output: Path | None,
    until: str | None,
    disks: tuple[str, ...],
    fmt: str | None,
    preallocate: bool,
    sequence: str | None,
    targets: tuple[str, ...],
    compress: bool,
    adjust_config: bool,
    name: str | None,
    define: bool,
    live: bool,
    resume_name: str | None,
    restart: bool,
    bandwidth: float | None,
    as_json: bool,
    uri: str,
    force: bool,
    no_progress: bool,
) -> None:
    """Restore the disks of backup set DIR, each written once at its point in time."""
    if live or resume_name:
        if sequence or compress or targets:
            raise UsageError("--sequence, --target and --compress do not go with --live")
        _live(directory, output, until, disks, fmt, preallocate, force, name, resume_name,
              restart, bandwidth, as_json, uri, no_progress)  # fmt: skip
        return
    if as_json or bandwidth is not None or restart:
        raise UsageError("--json, --bandwidth and --restart go with --live")
    if directory is None or output is None:
        raise UsageError("give the backup directory DIR and the output directory -o OUTDIR")
    files = tuple(f.strip() for f in sequence.split(",") if f.strip()) if sequence else ()
    config = RestoreConfig(directory, output, until, disks, fmt, preallocate, adjust_config,
                           name, define, uri, force, files, compress,
                           _device_targets(targets))  # fmt: skip
    the_plan = plan(config)
    for disk_plan in the_plan.disks:
        if disk_plan.warning:
            click.echo(f"{disk_plan.disk}: {disk_plan.warning}", err=True)
    bars = ProgressBars(not no_progress)
    try:
        result = restore(config, the_plan, _restore_progress(bars, the_plan.disks))
    finally:
        bars.clear()
    for disk in result.disks:
        rate = human_size(int(disk.data_bytes / max(disk.seconds, 1e-6)))
        click.echo(
            f"{disk.disk}: restored to {disk.image} ({disk.fmt}, {human_size(disk.virtual_size)}), "
            f"{human_size(disk.data_bytes)} data at {disk.point}, {disk.seconds:.1f} s, {rate}/s"
        )
    for path in result.boot_files:
        click.echo(f"boot file: {path}")
    if result.config is not None:
        click.echo(f"domain XML: {result.config}")
    if result.defined:
        click.echo(f"defined domain: {result.defined}")
    if result.autostart:
        click.echo(f"autostart: on, as the domain had it at backup time ({result.defined})")
    if result.tpm_state is not None:
        click.echo(f"vTPM state: put back into {result.tpm_state}")


def _device_targets(values: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    pairs = []
    for value in values:
        disk, sep, device = value.partition("=")
        if not sep or not disk or not device:
            raise UsageError(f"--target {value!r}: give DISK=DEVICE, e.g. vda=/dev/vg0/web01")
        pairs.append((disk, Path(device)))
    return tuple(pairs)


def _live(
    directory: Path | None,
    output: Path | None,
    until: str | None,
    disks: tuple[str, ...],
    fmt: str | None,
    preallocate: bool,
    force: bool,
    name: str | None,
    resume_name: str | None,
    restart: bool,
    bandwidth: float | None,
    as_json: bool,
    uri: str,
    no_progress: bool,
) -> None:
    """``restore --live`` and ``--live --resume NAME``."""
    if fmt == "raw":
        raise UsageError("--live writes qcow2 images (a block pull needs a qcow2 image over "
                         "the backup); convert afterwards, or restore without --live")  # fmt: skip
    if preallocate or force:
        raise UsageError("--preallocate and --force do not go with --live")
    bars = ProgressBars(not no_progress and not as_json)

    def progress(target: str, done: int, total: int) -> None:
        if target not in started:
            bars.start(target, total)
            started.add(target)
        bars.update(target, done)

    def running(domain: str, seconds: float) -> None:
        if not as_json:
            click.echo(f"{domain}: running after {seconds:.1f} s; copying its disks", err=True)

    started: set[str] = set()
    try:
        if resume_name is not None:
            if directory is not None or output is not None or until or disks or name:
                raise UsageError("--resume NAME takes no DIR, -o, --until, --disk or --name: "
                                 "the live restore's state says them")  # fmt: skip
            result = resume(resume_name, bandwidth, progress, restart=restart,
                            say=lambda line: click.echo(line, err=True))  # fmt: skip
        else:
            if directory is None or output is None:
                raise UsageError("restore --live needs DIR and -o OUTDIR")
            if restart:
                raise UsageError("--restart goes with --resume NAME")
            config = LiveConfig(directory, output, until, disks, name, uri, bandwidth)
            result = live_restore(config, progress, running)
    finally:
        bars.clear()
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    for target, image in result.images.items():
        click.echo(f"{target}: {image}")
    when = (f"running after {result.running_seconds:.1f} s, "
            if result.running_seconds is not None else "")  # fmt: skip
    click.echo(f"{result.name}: {when}complete after {result.complete_seconds:.1f} s; "
               f"it runs on {result.output} alone")  # fmt: skip


@click.command("info")
@_backup_dir
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def info_command(directory: Path, as_json: bool) -> None:
    """Show the chain of backup set DIR: checkpoints, backups, sizes, problems.

    Exits 4 when it lists problems."""
    report = info(InfoConfig(directory))
    click.echo(json.dumps(report, indent=2) if as_json else render(report))
    if report["problems"]:  # listed above; a script must not read them as a sound set
        raise ChainError(f"{len(report['problems'])} problem(s) found in {directory}")


@click.command("verify")
@_backup_dir
@click.option("--until", metavar="CHECKPOINT", help="Only the files this point needs.")
@click.option(
    "--add-sums",
    is_flag=True,
    help="Give each sound data file without one a .sums file (per-piece checksums that "
    "restore, vbmount and consolidate check as they read).",
)
@click.option("--no-progress", is_flag=True, help="No progress display.")
@click.option("--boot", is_flag=True,
              help="Boot the point (--until, default newest; --all: every point) isolated, "
              "without network; pass when the guest answers. The set is not written.")  # fmt: skip
@click.option("--fsck", is_flag=True,
              help="Check every guest file system of the point (--until, default newest; "
              "--all: every point) read-only in a libguestfs appliance, no boot.")  # fmt: skip
@click.option("--all", "all_points", is_flag=True,
              help="With --boot or --fsck: every point of the chain.")  # fmt: skip
@click.option("--timeout", type=click.FloatRange(min=1), default=300, show_default=True,
              help="With --boot: seconds a point may take to give its heartbeat.")  # fmt: skip
@click.option("--expect-agent", is_flag=True,
              help="With --boot: the heartbeat is the guest agent answering (the default when "
              "the saved configuration has an agent channel).")  # fmt: skip
@click.option(
    "--expect-console",
    metavar="REGEX",
    help="With --boot: the heartbeat is REGEX printed on the serial console.",
)
@click.option("--check", "check_cmd", metavar="CMD",
              help="With --boot: run CMD in the guest (sh -c, through the agent); it must exit "
              "0, e.g. 'systemctl is-system-running --wait'.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="With --boot or --fsck: print the report as JSON.")  # fmt: skip
@connect_option("With --boot: libvirt connection URI")
def verify_command(
    directory: Path,
    until: str | None,
    add_sums: bool,
    no_progress: bool,
    boot: bool,
    fsck: bool,
    all_points: bool,
    timeout: float,
    expect_agent: bool,
    expect_console: str | None,
    check_cmd: str | None,
    as_json: bool,
    uri: str,
) -> None:
    """Check every data file of DIR (checksums, structure, lz4) and the chain links.

    With --boot, boot points of DIR instead and report whether each comes up."""
    if boot and fsck:
        raise UsageError("give --boot or --fsck, not both")
    if not (boot or fsck) and (all_points or as_json):
        raise UsageError("--all and --json go with --boot or --fsck")
    if not boot and (expect_agent or expect_console or check_cmd):
        raise UsageError("--expect-agent, --expect-console and --check go with --boot")
    if add_sums:
        _add_sums(directory)
        return
    if fsck:
        _fsck(directory, until, all_points, as_json)
        return
    if boot:
        _boot_check(
            BootCheckConfig(
                directory, until, all_points, timeout, expect_agent, expect_console, check_cmd, uri
            ),
            as_json,
        )
        return
    config = VerifyConfig(directory, until)
    bars = ProgressBars(not no_progress)
    try:
        report = verify(config, _bytes_progress(bars, "verify", planned_bytes(config)))
    finally:
        bars.clear()
    for result in report.files:
        checked = "ok" in (result.checksum, result.sums)
        mark = "BAD" if not result.sound else "ok" if checked else "ok?"
        click.echo(f"{mark:<3}  {result.path}")
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    if not report.sound:
        raise VerifyError(f"{len(report.problems)} problem(s) found in {report.directory}")
    unchecked = sum(1 for f in report.files if f.checksum == "none" and f.sums == "none")
    if unchecked:
        click.echo(
            f"{directory}: no damage found in {len(report.files)} file(s), but {unchecked} "
            "have no checksum file: some damage in them cannot be detected (see the warnings)"
        )
    else:
        click.echo(f"{directory}: {len(report.files)} file(s) sound")


def _fsck(directory: Path, until: str | None, all_points: bool, as_json: bool) -> None:
    say = lambda line: click.echo(line, err=True)  # noqa: E731
    results = []
    for point in chosen_points(BackupSet(directory), until, all_points):
        say(f"checking the file systems of {point}")
        results += fsck_point(directory, point, say)
    bad = [r for r in results if r.result == "errors"]
    if as_json:
        report = {"directory": str(directory), "passed": not bad,
                  "filesystems": [r.to_dict() for r in results]}  # fmt: skip
        click.echo(json.dumps(report, indent=2))
    else:
        for r in results:
            detail = f"  {r.detail}" if r.detail else ""
            click.echo(f"{r.result:<7} {r.point}  {r.disk} {r.device} {r.fstype}{detail}")
    if not results:
        raise VerifyError(f"no file system found on the disks of {directory}")
    if bad:
        raise VerifyError(
            f"{len(bad)} file system(s) of {directory} have errors: "
            + ", ".join(f"{r.point} {r.device}" for r in bad)
        )


def _boot_check(config: BootCheckConfig, as_json: bool) -> None:
    results = boot_check(config, lambda line: click.echo(line, err=True))
    failed = [r for r in results if not r.passed]
    if as_json:
        report = {
            "directory": str(config.directory),
            "passed": not failed,
            "points": [r.to_dict() for r in results],
        }
        click.echo(json.dumps(report, indent=2))
    else:
        for r in results:
            took = f" after {r.seconds:.0f} s" if r.seconds is not None else ""
            state = "ok  " if r.passed else "FAIL"
            click.echo(
                f"{state} {r.point}: {r.heartbeat}{took}{'' if r.passed else ': ' + r.reason}"
            )
            if r.check is not None:
                click.echo(f"     check {r.check['command']!r}: exit {r.check['exitcode']}")
            for line in r.console_tail:
                click.echo(f"     | {line}")
    if failed:
        raise VerifyError(
            f"{len(failed)} of {len(results)} point(s) of {config.directory} did not boot: "
            + ", ".join(r.point for r in failed)
        )


def _add_sums(directory: Path) -> None:
    result = add_sums_to(directory)
    for path in result.added:
        click.echo(f"added  {path.name}.sums")
    for path in result.unchecked:
        click.echo(
            f"warning: {path.name} has no .chksum: its sums record the file as it is now",
            err=True,
        )
    for problem in result.refused:
        click.echo(f"problem: {problem}", err=True)
    if result.refused:
        raise VerifyError(
            f"{len(result.refused)} problem(s) found in {directory}: no sums added for "
            "damaged files"
        )
    click.echo(
        f"{directory}: sums added for {len(result.added)} file(s), "
        f"{len(result.present)} had them already"
    )
