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
from vbbackup.virt.connection import default_uri


class ErrorHandlingGroup(click.Group):
    """A click group that turns VbError (and Ctrl-C) into one stderr line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VbError as err:
            click.echo(f"{ctx.find_root().info_name}: error: {err}", err=True)
            sys.exit(err.exit_code)
        except click.UsageError as err:  # a bad argument or option: the same one line
            command = " ".join(filter(None, [ctx.find_root().info_name, ctx.invoked_subcommand]))
            hint = f" (see {command} -h)"
            click.echo(f"{ctx.find_root().info_name}: error: {err.format_message()}{hint}",
                       err=True)  # fmt: skip
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo(f"{ctx.find_root().info_name}: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            sys.exit(1)
        except OSError as err:  # a path the library did not expect: still one line, no traceback
            click.echo(f"{ctx.find_root().info_name}: error: {os_error_text(err)}", err=True)
            sys.exit(1)


def os_error_text(err: OSError) -> str:
    """``cannot write /x/y: Read-only file system`` from an OSError's parts."""
    what = err.strerror or str(err)
    if err.filename is None:
        return what
    if err.filename2 is not None:
        return f"{err.filename} -> {err.filename2}: {what}"
    return f"{err.filename}: {what}"


def connect_option(what: str = "libvirt connection URI") -> Any:
    """``-c/--connect URI``, defaulting as virtnbdbackup does (root: system, else session)."""
    return click.option("-c", "--connect", "uri", default=default_uri,
                        show_default="qemu:///system as root, else qemu:///session",
                        help=f"{what}.")  # fmt: skip
