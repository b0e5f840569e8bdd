"""Boot files a domain needs besides its disks: kernel, initrd, UEFI loader, NVRAM.

They live outside the disk images, so a restore without them cannot boot
(direct kernel boot, UEFI variables). Saved next to the data files as
virtnbdbackup names them, ``<basename>.<ident>`` (``<basename>`` for a
copy), where its virtnbdrestore finds them too.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lxml import etree

from vbbackup import fsutil
from vbbackup.errors import VbError
from vbbackup.virt import domainxml
from vbbackup.virt.remote import on_host

BOOT_ELEMENTS = ("kernel", "initrd", "loader", "nvram")


@dataclass(frozen=True)
class BootFile:
    kind: str  # one of BOOT_ELEMENTS
    path: Path


def boot_files(domain_xml: str | bytes) -> list[BootFile]:
    """The boot files a domain XML names under ``<os>``, in BOOT_ELEMENTS order."""
    named = domainxml.boot_files(domain_xml)
    return [BootFile(kind, Path(named[kind])) for kind in BOOT_ELEMENTS if kind in named]


def save_boot_files(
    domain_xml: str | bytes, directory: Path, ident: str | None, ssh: Sequence[str] = ()
) -> list[Path]:
    """Copy the domain's boot files into the backup directory; return the copies.

    ``ident`` is the backup's checkpoint name (or unix time); None for a copy.
    ``ssh``: the files are on the domain's host (``vbbackup.virt.remote``).
    """
    saved = []
    for item in boot_files(domain_xml):
        name = item.path.name if ident is None else f"{item.path.name}.{ident}"
        target = directory / name
        try:
            with fsutil.atomic_output(target, overwrite=True) as dst:
                if ssh:
                    _copy_over_ssh(ssh, item, dst)
                else:
                    with open(item.path, "rb") as src:
                        shutil.copyfileobj(src, dst, 1024 * 1024)
        except OSError as err:
            raise VbError(f"cannot save the {item.kind} file {item.path}: {err.strerror}") from None
        saved.append(target)
    return saved


def _copy_over_ssh(ssh: Sequence[str], item: BootFile, dst: BinaryIO) -> None:
    done = subprocess.run(
        on_host(ssh, ["cat", str(item.path)]), stdout=dst, stderr=subprocess.PIPE, check=False
    )
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise VbError(f"cannot save the {item.kind} file {item.path}: {message}")


def saved_boot_files(directory: Path) -> list[tuple[str, Path]]:
    """(kind, saved copy) for each boot file the set's domain XMLs name, newest copy last."""
    found: dict[Path, str] = {}
    for config in sorted(directory.glob("vmconfig.*.xml")):
        try:
            items = boot_files(config.read_bytes())
        except (OSError, etree.XMLSyntaxError):
            continue
        for item in items:
            for copy in sorted(directory.glob(f"{glob.escape(item.path.name)}*")):
                found.setdefault(copy, item.kind)
    return sorted(
        ((kind, path) for path, kind in found.items()), key=lambda kp: kp[1].stat().st_mtime
    )
