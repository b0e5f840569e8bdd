"""``qemu-img info`` of a disk image in use (saved as ``<disk>.<ident>.qcow.json``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from vbbackup.errors import LibvirtError
from vbbackup.virt.remote import on_host


def image_info(path: str, ssh: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON of ``qemu-img info -U``: -U because the running domain holds the lock.

    ``ssh``: run it on the domain's host (``vbbackup.virt.remote.ssh_prefix``).
    """
    try:
        done = subprocess.run(
            on_host(ssh, ["qemu-img", "info", "-U", "--output=json", path]),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except FileNotFoundError:
        raise LibvirtError("qemu-img is not installed (Debian package qemu-utils)") from None
    if done.returncode != 0:
        raise LibvirtError(f"qemu-img info {path} failed: {done.stderr.strip()}")
    info: dict[str, Any] = json.loads(done.stdout)
    return info


def qcow2_compat(info: dict[str, Any]) -> str | None:
    """ "0.10" (qcow2 v2, no persistent bitmaps) or "1.1"; None if not qcow2."""
    if info.get("format") != "qcow2":
        return None
    data = info.get("format-specific", {}).get("data", {})
    compat = data.get("compat")
    return str(compat) if compat is not None else None
