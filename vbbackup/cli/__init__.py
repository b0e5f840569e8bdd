"""The `vbbackup` command line: one click group; each command group lives in its own module.

A command's module is imported when the command runs (or ``--help`` lists them all): a
restore does not pay for importing the backup engine and libvirt's bindings. Register a
command in ``_COMMANDS``.
"""

from __future__ import annotations

import importlib

import click

from vbbackup import __version__
from vbbackup.cli.common import ErrorHandlingGroup

_COMMANDS = {
    "full": "vbbackup.cli.backup:full_command",
    "inc": "vbbackup.cli.backup:inc_command",
    "diff": "vbbackup.cli.backup:diff_command",
    "copy": "vbbackup.cli.backup:copy_command",
    "auto": "vbbackup.cli.backup:auto_command",
    "restore": "vbbackup.cli.restore:restore_command",
    "info": "vbbackup.cli.restore:info_command",
    "verify": "vbbackup.cli.restore:verify_command",
    "check": "vbbackup.cli.maintenance:check_command",
    "consolidate": "vbbackup.cli.maintenance:consolidate_command",
    "prune": "vbbackup.cli.maintenance:prune_command",
}


class _LazyGroup(ErrorHandlingGroup):
    """Commands imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attr = spec.split(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vbbackup")
def main() -> None:
    """Online backup and instant recovery for libvirt/KVM virtual machines."""
