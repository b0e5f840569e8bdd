"""What every click command of vbbackup and vbmount shares.

``ErrorHandlingGroup`` is the one place where a library error becomes a
one-line message on stderr and the process exit status: commands just let
``VbError`` propagate.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from vbbackup.errors import VbError


class ErrorHandlingGroup(click.Group):
    """A click group that turns VbError (and Ctrl-C) into one stderr line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VbError as err:
            click.echo(f"{ctx.find_root().info_name}: error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo(f"{ctx.find_root().info_name}: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(1)
