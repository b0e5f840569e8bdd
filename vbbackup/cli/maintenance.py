"""Maintenance commands: prune, consolidate, check."""

from __future__ import annotations

from pathlib import Path

import click

from vbbackup.cli.common import connect_option
from vbbackup.engine.check import CheckConfig, check, render
from vbbackup.engine.consolidate import ConsolidateConfig, consolidate
from vbbackup.engine.prune import PruneConfig, prune


@click.command("prune")
@click.argument("root", type=click.Path(path_type=Path))
@click.option(
    "--keep-chains",
    type=int,
    required=True,
    help="How many of the newest chain directories to keep (at least 1).",
)
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@click.option(
    "-c",
    "--connect",
    "uri",
    metavar="URI",
    help="Also delete the removed chains' checkpoints (and bitmaps) of their domain on this "
    "libvirt host, e.g. qemu:///system.",
)
def prune_command(root: Path, keep_chains: int, dry_run: bool, uri: str | None) -> None:
    """Remove whole old chain directories below ROOT, oldest full backup first."""
    config = PruneConfig(root=root, keep_chains=keep_chains, dry_run=dry_run, uri=uri)
    prune(config, click.echo)


@click.command("consolidate")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--until",
    metavar="CP",
    help="Merge the full and the incrementals up to this checkpoint (default: all).",
)
def consolidate_command(directory: Path, until: str | None) -> None:
    """Merge a chain's full and incrementals into one synthetic full backup."""
    consolidate(ConsolidateConfig(directory=directory, until=until), click.echo)


@click.command("check")
@click.argument("domain")
@click.option(
    "-o",
    "--output",
    "directory",
    type=click.Path(path_type=Path),
    help="Backup directory (chain) of the domain to compare with.",
)
@connect_option()
@click.pass_context
def check_command(ctx: click.Context, domain: str, directory: Path | None, uri: str) -> None:
    """Show checkpoints, image bitmaps and the backup chain side by side (read-only).

    Exits 1 when it finds an inconsistency; each comes with the command that fixes it.
    """
    report = check(CheckConfig(domain=domain, directory=directory, uri=uri))
    for line in render(report):
        click.echo(line)
    if report.findings:
        ctx.exit(1)
