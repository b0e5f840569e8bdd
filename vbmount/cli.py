"""The `vbmount` command line: thin click commands over the vbmount library modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vbbackup import __version__
from vbbackup.chain import unchecked_warnings
from vbbackup.cli.common import ErrorHandlingGroup
from vbmount import boot, copy, mounting, serve

F = Callable[..., Any]

backup_dir = click.argument(
    "directory", type=click.Path(exists=True, file_okay=False, path_type=Path)
)


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
@click.option("--port", type=int, help="Listen on this TCP port.")
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
@disk_option("List only this disk (default: every disk).")
@until_option
def ls_command(directory: Path, disk: str | None, until: str | None) -> None:
    """List partitions (MBR, GPT) and the file system in each."""
    layouts = mounting.read_layouts(directory, (disk,) if disk else (), until)
    click.echo(f"{'DISK':<8} {'PART':>4} {'START':>14} {'SIZE':>14}  {'TYPE':<22} FILESYSTEM")
    for name, layout in layouts.items():
        for p in layout.partitions:
            click.echo(
                f"{name:<8} {p.number or '-':>4} {p.start:>14} {p.size:>14}  "
                f"{p.type:<22} {p.filesystem}"
            )


@main.command("mount")
@backup_dir
@click.argument("mountpoint", type=click.Path(path_type=Path))
@disk_option("Mount only this disk (default: every disk).")
@until_option
@click.option("--partition", type=int, help="Mount only partition N, at MOUNTPOINT itself.")
def mount_command(
    directory: Path, mountpoint: Path, disk: str | None, until: str | None, partition: int | None
) -> None:
    """Mount every recognised file system read-only at MOUNTPOINT/<disk><N>."""
    request = mounting.MountRequest(
        directory, mountpoint, (disk,) if disk else (), until, partition
    )
    warn_unchecked(directory, disk, until)
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
@click.option("-c", "--connect", "uri", default="qemu:///system", show_default=True,
              help="libvirt connection URI.")  # fmt: skip
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
@click.option("-c", "--connect", "uri", default="qemu:///system", show_default=True,
              help="libvirt connection URI.")  # fmt: skip
def unboot_command(name: str, uri: str) -> None:
    """Destroy and undefine a booted domain, stop its servers, remove its overlays."""
    if not boot.unboot(name, uri):
        click.echo(f"nothing booted by vbmount as {name}", err=True)


@main.command("copy")
@backup_dir
@click.argument("output", type=click.Path(path_type=Path))
@disk_option("Disk to copy (needed when the set holds several).")
@until_option
@click.option("-O", "--format", "fmt", type=click.Choice(["qcow2", "raw"]), default="qcow2",
              show_default=True, help="Image format of OUTPUT.")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def copy_command(directory: Path, output: Path, **options: Any) -> None:
    """Write one disk at a point in time to a new sparse image."""
    warn_unchecked(directory, options["disk"], options["until"])
    copy.copy_disk(copy.CopyConfig(directory=directory, output=output, **options))
    click.echo(f"wrote {output}")
