"""The `vbmount` command line: thin click commands over the vbmount library modules."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from vbbackup import __version__
from vbbackup.chain import unchecked_warnings
from vbbackup.cli.common import ErrorHandlingGroup, connect_option
from vbbackup.errors import MountError, TargetExistsError, UsageError
from vbbackup.fsutil import atomic_output
from vbbackup.gfs import files
from vbbackup.gfs.appliance import open_point
from vbmount import boot, copy, guestmount, mounting, serve

F = Callable[..., Any]

backup_dir = click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path)
)


def sequence_option(f: F) -> F:
    return click.option(
        "--sequence",
        metavar="FILE,FILE...",
        callback=lambda _ctx, _param, value: (
            tuple(v.strip() for v in value.split(",") if v.strip()) if value else None
        ),
        help="Exactly these data files of one disk, in this order (virtnbdmap's -f), "
        "instead of --until.",
    )(f)


def until_option(f: F) -> F:
    return click.option(
        "--until",
        metavar="CHECKPOINT",
        help="Point in time: a checkpoint name (vbbackup.<id>.N, virtnbdbackup.N) or data "
        "file; default: newest.",
    )(f)


def warn_unchecked(directory: Path, disk: str | None, until: str | None) -> None:
    """One line per disk whose files have no .sums: served, but not checked as read."""
    for line in unchecked_warnings(directory, (disk,) if disk else (), until):
        click.echo(line, err=True)


def disk_option(help_text: str) -> Callable[[F], F]:
    return click.option("--disk", metavar="TARGET", help=help_text)


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vbmount")
def main() -> None:
    """Serve, mount, boot or copy out a point in time of a backup set, read-only."""


@main.command("serve")
@backup_dir
@disk_option("Disk to serve (needed when the set holds several).")
@until_option
@click.option("--socket", type=click.Path(path_type=Path), help="Listen on this unix socket.")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen on this TCP port.")
@click.option(
    "--listen",
    metavar="ADDR",
    help="With --port: the address to listen on (default 127.0.0.1; 0.0.0.0 or :: "
    "for every address: anyone who reaches it reads the backup, use --tls).",
)
@click.option(
    "--export-name",
    default="",
    metavar="NAME",
    help="The export's name (virtnbdmap's -e); clients ask for it.",
)
@click.option("--tls", is_flag=True, help="With --port: require TLS (nbdkit --tls=require).")
@click.option(
    "--tls-certificates",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="X.509 directory: ca-cert.pem, server-cert.pem, server-key.pem.",
)
@click.option(
    "--tls-psk",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Pre-shared keys, one user:hexkey per line (psktool's format).",
)
@sequence_option
@click.option("--writable", is_flag=True, help="Accept writes into a throwaway overlay (cow).")
@click.option("--daemon", is_flag=True, help="Return once serving; stop it by its pid file.")
@click.option("--pidfile", type=click.Path(path_type=Path), help="Pid file (with --daemon).")
def serve_command(directory: Path, **options: Any) -> None:
    """Serve one disk over NBD until Ctrl-C (or in the background with --daemon)."""
    config = serve.ServeConfig(directory=directory, **options)
    warn_unchecked(directory, config.disk, config.until)
    serve.serve(config, announce=click.echo)


@main.command("ls")
@backup_dir
@click.argument("guest_path", required=False)
@until_option
@click.option(
    "--partitions",
    is_flag=True,
    help="Only the partition tables, read by vbmount itself (fast, no appliance).",
)
@disk_option("With --partitions: only this disk (default: every disk).")
def ls_command(
    directory: Path, guest_path: str | None, until: str | None, partitions: bool,
    disk: str | None,
) -> None:  # fmt: skip
    """List the guest's file systems, or with GUEST_PATH (/etc, /dev/vg0/root:/etc) a
    directory's entries; read in a libguestfs appliance, nothing mounted on the host."""
    if partitions:
        if guest_path:
            raise UsageError("--partitions lists partitions, not a GUEST_PATH")
        _ls_partitions(directory, disk, until)
        return
    warn_unchecked(directory, None, until)
    with open_point(directory, until, _say) as point:
        if guest_path is None:
            rows = files.filesystems(point)
            click.echo(
                f"{'DEVICE':<20} {'DISK':<9} {'TYPE':<12} {'SIZE':>14}  {'LABEL':<16} MOUNTED"
            )
            for fs in rows:
                click.echo(f"{fs.device:<20} {fs.disk or '-':<9} {fs.fstype:<12} {fs.size:>14}  "
                           f"{fs.label or '-':<16} {fs.mountpoint or '-'}")  # fmt: skip
            return
        for e in files.list_dir(point, guest_path):
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime))
            name = f"{e.name} -> {e.target}" if e.target else e.name
            click.echo(f"{e.kind:<6} {e.mode:04o} {e.size:>12} {when}  {name}")


def _ls_partitions(directory: Path, disk: str | None, until: str | None) -> None:
    layouts = mounting.read_layouts(directory, (disk,) if disk else (), until)
    click.echo(f"{'DISK':<8} {'PART':>4} {'START':>14} {'SIZE':>14}  {'TYPE':<22} FILESYSTEM")
    for name, layout in layouts.items():
        for p in layout.partitions:
            click.echo(
                f"{name:<8} {p.number or '-':>4} {p.start:>14} {p.size:>14}  "
                f"{p.type:<22} {p.filesystem}"
            )


def _say(line: str) -> None:
    click.echo(line, err=True)


@main.command("get")
@backup_dir
@click.argument("guest_paths", metavar="GUEST_PATH...", nargs=-1, required=True)
@until_option
@click.option("-o", "--output", "dest", type=click.Path(path_type=Path),
              help="New directory to copy into (DEST.partial until complete).")  # fmt: skip
@click.option(
    "--tar", "tar_out", metavar="FILE", help="Write one tar archive instead (- for stdout)."
)
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def get_command(
    directory: Path, guest_paths: tuple[str, ...], until: str | None, dest: Path | None,
    tar_out: str | None, force: bool,
) -> None:  # fmt: skip
    """Copy files or directories out of the guest, owner, mode and times kept."""
    if (dest is None) == (tar_out is None):
        raise UsageError("give -o DEST or --tar FILE (- for stdout)")
    for target in (dest, Path(tar_out) if tar_out not in (None, "-") else None):
        if target is not None and target.exists() and not force:  # before any launch
            raise TargetExistsError(f"{target} exists; choose a new directory or give --force")
    warn_unchecked(directory, None, until)
    with open_point(directory, until, _say) as point:
        if dest is not None:
            files.get(point, guest_paths, dest, force)
            click.echo(f"copied {len(guest_paths)} path(s) into {dest}", err=True)
            return
        if tar_out == "-":
            files.write_tar(point, guest_paths, click.get_binary_stream("stdout"))
            return
        target = Path(str(tar_out))
        with atomic_output(target, overwrite=force) as out:
            files.write_tar(point, guest_paths, out)
        click.echo(f"wrote {target}", err=True)


@main.command("inspect")
@backup_dir
@until_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect_command(directory: Path, until: str | None, as_json: bool) -> None:
    """The guest's operating system as libguestfs inspection finds it."""
    warn_unchecked(directory, None, until)
    with open_point(directory, until, _say) as point:
        found = files.inspect(point)
    if as_json:
        click.echo(json.dumps([asdict(i) for i in found], indent=2))
        return
    if not found:
        raise MountError(f"no operating system found on the disks of {directory}")
    for i in found:
        click.echo(f"root:        {i.root}")
        click.echo(f"type:        {i.type} ({i.arch})")
        click.echo(f"distro:      {i.distro} {i.version}")
        click.echo(f"product:     {i.product_name}")
        click.echo(f"hostname:    {i.hostname}")
        for where, device in i.mountpoints.items():
            click.echo(f"mountpoint:  {where:<12} {device}")
        for kernel in i.kernels:
            click.echo(f"kernel:      {kernel}")


@main.command("mount")
@backup_dir
@click.argument("mountpoint", type=click.Path(path_type=Path))
@until_option
@click.option("--filesystem", "filesystems", metavar="DEVICE[:MOUNTPOINT]", multiple=True,
              help="Mount these file systems (repeat) instead of the guest's own layout; "
              "vbmount ls DIR lists them.")  # fmt: skip
@click.option("--kernel", is_flag=True,
              help="Mount partitions in the HOST kernel (nbdfuse, loop devices): faster, but "
              "trusts the image; ext2/3/4, xfs, vfat and btrfs partitions only.")  # fmt: skip
@disk_option("With --kernel: mount only this disk (default: every disk).")
@click.option("--partition", type=int, help="With --kernel: only partition N, at MOUNTPOINT.")
def mount_command(
    directory: Path, mountpoint: Path, until: str | None, filesystems: tuple[str, ...],
    kernel: bool, disk: str | None, partition: int | None,
) -> None:  # fmt: skip
    """Mount the point read-only at MOUNTPOINT: the guest's tree as it mounts it, through
    libguestfs (its file system code runs in an appliance VM, not in the host kernel)."""
    warn_unchecked(directory, disk, until)
    if not kernel:
        if disk or partition:
            raise UsageError("--disk and --partition go with --kernel")
        for what in guestmount.mount_guest(directory, mountpoint, until, filesystems, _say):
            click.echo(f"mounted {what} at {mountpoint} (read-only)")
        return
    if filesystems:
        raise UsageError("--filesystem goes with the libguestfs mount, not with --kernel")
    request = mounting.MountRequest(
        directory, mountpoint, (disk,) if disk else (), until, partition
    )
    for item in mounting.mount_backup(request):
        where = str(item.path) if item.path else item.note
        label = f"{item.disk}{item.partition.number or ''}"
        click.echo(f"{label}: {item.partition.filesystem} -> {where}")


@main.command("umount")
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount_command(mountpoint: Path) -> None:
    """Unmount and stop everything `vbmount mount` started there (safe to repeat)."""
    if not mounting.umount_backup(mountpoint):
        click.echo(f"nothing mounted by vbmount at {mountpoint}", err=True)


@main.command("boot")
@backup_dir
@until_option
@click.option("--name", help="Name of the new domain (default: <original>-restore).")
@connect_option()
@click.option("--start/--no-start", default=True, show_default=True, help="Start the domain.")
def boot_command(directory: Path, **options: Any) -> None:
    """Run the VM from the backup: disks are overlays over the served chain."""
    warn_unchecked(directory, None, options["until"])
    booted = boot.boot(boot.BootConfig(directory=directory, **options))
    click.echo(f"domain {booted.name} defined{' and started' if booted.started else ''}")
    for target, overlay in booted.overlays.items():
        click.echo(f"{target}: {overlay}")


@main.command("unboot")
@click.argument("name")
@connect_option()
def unboot_command(name: str, uri: str) -> None:
    """Destroy and undefine a booted domain, stop its servers, remove its overlays."""
    if not boot.unboot(name, uri):
        click.echo(f"nothing booted by vbmount as {name}", err=True)


@main.command("copy")
@backup_dir
@click.argument("output", type=click.Path(path_type=Path))
@disk_option("Disk to copy (needed when the set holds several).")
@until_option
@sequence_option
@click.option("-O", "--format", "fmt", type=click.Choice(["qcow2", "raw"]), default="qcow2",
              show_default=True, help="Image format of OUTPUT.")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def copy_command(directory: Path, output: Path, **options: Any) -> None:
    """Write one disk at a point in time to a new sparse image."""
    warn_unchecked(directory, options["disk"], options["until"])
    copy.copy_disk(copy.CopyConfig(directory=directory, output=output, **options))
    click.echo(f"wrote {output}")
