"""Opening a libvirt connection and finding a domain, with errors a user can act on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import libvirt

from vbbackup.errors import LibvirtError


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; ours are reported once, by us."""


libvirt.registerErrorHandler(_quiet, None)


def default_uri() -> str:
    """As virtnbdbackup: the system daemon for root, the user's session daemon otherwise."""
    return "qemu:///system" if os.geteuid() == 0 else "qemu:///session"


@contextlib.contextmanager
def libvirt_connection(uri: str) -> Iterator[libvirt.virConnect]:
    """A connection that is closed on every path."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as err:
        message = err.get_error_message()
        raise LibvirtError(f"cannot connect to libvirt at {uri}: {message}") from None
    try:
        yield conn
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def lookup_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain:
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise LibvirtError(f"domain {name!r} not found at {conn.getURI()}") from None
        raise LibvirtError(f"cannot look up domain {name!r}: {err.get_error_message()}") from None


def error_text(err: libvirt.libvirtError) -> str:
    return err.get_error_message() or str(err)
