"""Commands on the domain's host when libvirt is reached over ``qemu+ssh://``.

The libvirt API works over any URI, but two things read the host's files
directly: ``qemu-img info`` of the images and the boot-file copies. Over
ssh they run there, through the same user, port and key as libvirt's own
connection (``?keyfile=``, ``?no_verify=1`` as libvirt reads them)::

    qemu+ssh://root@host:2222/system?keyfile=/k&no_verify=1
    -> ssh -o BatchMode=yes -p 2222 -i /k -o StrictHostKeyChecking=no ... root@host CMD
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from vbbackup.errors import UsageError


def is_remote(uri: str) -> bool:
    return urlsplit(uri).hostname is not None


def ssh_prefix(uri: str) -> list[str]:
    """The ssh argv that reaches the URI's host; [] for a local URI."""
    parts = urlsplit(uri)
    if parts.hostname is None:
        return []
    if not parts.scheme.endswith("+ssh"):
        raise UsageError(
            f"{uri}: a remote host is supported over ssh only (qemu+ssh://user@host/system)"
        )
    query = parse_qs(parts.query)
    argv = ["ssh", "-o", "BatchMode=yes"]
    if parts.port:
        argv += ["-p", str(parts.port)]
    if "keyfile" in query:
        argv += ["-i", query["keyfile"][0]]
    if query.get("no_verify", ["0"])[0] == "1":
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    argv += ["-o", "LogLevel=ERROR"]
    user = f"{parts.username}@" if parts.username else ""
    return [*argv, f"{user}{parts.hostname}"]


def on_host(prefix: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``argv`` run locally, or through ``prefix`` (ssh) quoted for the remote shell."""
    return [*prefix, shlex.join(argv)] if prefix else list(argv)
