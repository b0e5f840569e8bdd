"""Maintenance commands: prune, consolidate, check."""

from __future__ import annotations

from pathlib import Path

import click

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
def prune_command(root: Path, keep_chains: int, dry_run: bool) -> None:
    """Remove whole old chain directories below ROOT, oldest full backup first."""
    prune(PruneConfig(root=root, keep_chains=keep_chains, dry_run=dry_run), click.echo)
