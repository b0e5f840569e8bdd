"""The `vbbackup` command line: one click group; each command group lives in its own module.

A command module registers itself here with ``main.add_command(...)`` below the group.
"""

import click

from vbbackup import __version__
from vbbackup.cli.common import ErrorHandlingGroup


@click.group(cls=ErrorHandlingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vbbackup")
def main() -> None:
    """Online backup and instant recovery for libvirt/KVM virtual machines."""


from vbbackup.cli.maintenance import (  # noqa: E402
    check_command,
    consolidate_command,
    prune_command,
)

main.add_command(prune_command)
main.add_command(consolidate_command)
main.add_command(check_command)

from vbbackup.cli.restore import info_command, restore_command, verify_command  # noqa: E402

main.add_command(restore_command)
main.add_command(info_command)
main.add_command(verify_command)

from vbbackup.cli.backup import BACKUP_COMMANDS  # noqa: E402

for _command in BACKUP_COMMANDS:
    main.add_command(_command)
