"""Stream one disk at one point in time into a new sparse image (``vbmount copy``, restore).

The view is served by our nbdkit plugin in captive mode (``nbdkit -U - --run``),
and ``qemu-img convert`` copies from it: it asks the export for block status, so
holes and zero ranges of the backup are never written and stay holes. The target
is created first with ``qemu-img create`` (qcow2 options from the set's
``*.qcow.json`` when present), written as ``OUT.partial``, fsync'ed, renamed::

    nbdkit -U - --readonly python vbmount.py dir=D disk=vda until=CP \\
        --run 'qemu-img convert -n --target-is-zero -f raw nbd+unix:///?socket=S OUT.partial'
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vbbackup.chain import BackupSet
from vbbackup.errors import TargetExistsError, VbError
from vbbackup.fsutil import atomic_path

PLUGIN_ERROR = "vbmount: error:"  # how the plugin reports a read it refused (damaged data)
PLUGIN = Path(__file__).resolve().parents[2] / "nbdkit_plugin" / "vbmount.py"
FORMATS = ("qcow2", "raw")

# qemu-img info's format-specific qcow2 keys -> qemu-img create -o names.
_QCOW2_KEYS = {
    "compat": "compat",
    "lazy-refcounts": "lazy_refcounts",
    "refcount-bits": "refcount_bits",
    "extended-l2": "extended_l2",
    "compression-type": "compression_type",
}


@dataclass(frozen=True)
class Export:
    """One disk of a backup directory at one point in time (None: the newest)."""

    directory: Path
    disk: str | None = None
    until: str | None = None


def plugin_args(export: Export) -> list[str]:
    """nbdkit arguments that load our plugin for `export` (VBMOUNT_PLUGIN overrides the path)."""
    plugin = Path(os.environ.get("VBMOUNT_PLUGIN", PLUGIN))
    if not plugin.is_file():
        raise VbError(f"nbdkit plugin not found: {plugin}")
    args = ["python", str(plugin), f"dir={Path(export.directory).resolve()}"]
    if export.disk is not None:
        args.append(f"disk={export.disk}")
    if export.until is not None:
        args.append(f"until={export.until}")
    return args


def qcow2_options(qemu_info: dict[str, Any] | None) -> str:
    """``-o`` value recreating the source image's qcow2 options ("" when unknown)."""
    if not qemu_info or qemu_info.get("format") != "qcow2":
        return ""
    opts = []
    if isinstance(qemu_info.get("cluster-size"), int):
        opts.append(f"cluster_size={qemu_info['cluster-size']}")
    data = qemu_info.get("format-specific", {}).get("data", {})
    for key, name in _QCOW2_KEYS.items():
        value = data.get(key)
        if isinstance(value, bool):
            opts.append(f"{name}={'on' if value else 'off'}")
        elif isinstance(value, int | str):
            opts.append(f"{name}={value}")
    return ",".join(opts)


def copy_out(
    export: Export,
    output: Path,
    fmt: str = "qcow2",
    *,
    overwrite: bool = False,
    preallocation: str | None = None,
) -> None:
    """Write `export` to the new image `output` (format `fmt`), sparse and atomically.

    `preallocation` (qemu-img's: "metadata", "falloc", "full") reserves the space up front.
    """
    if fmt not in FORMATS:
        raise VbError(f"unsupported image format {fmt!r} (use qcow2 or raw)")
    output = Path(output)
    if output.exists() and not overwrite:
        raise TargetExistsError(f"{output} already exists; refusing to overwrite it (--force)")
    backup = BackupSet(export.directory)
    point = backup.resolve(export.disk, export.until)
    options = qcow2_options(backup.qemu_info(point)) if fmt == "qcow2" else ""
    if preallocation:
        options = ",".join(filter(None, [options, f"preallocation={preallocation}"]))
    # checked above with the CLI's hint; the partial is ours to replace
    with atomic_path(output, overwrite=True) as tmp:
        tmp.unlink(missing_ok=True)
        create = ["qemu-img", "create", "-q", "-f", fmt]
        _run([*create, *(["-o", options] if options else []), str(tmp), str(point.virtual_size)])
        # -W (writes out of order) for raw only: 10-30% faster here, but in a
        # qcow2 it would allocate clusters out of the disk's order.
        order = "-W " if fmt == "raw" else ""
        convert = (
            f"qemu-img convert {order}-n --target-is-zero -f raw -O "
            f'{fmt} nbd+unix:///?socket="$unixsocket" {shlex.quote(str(tmp))}'
        )
        exported = Export(export.directory, point.disk, export.until)
        _run(["nbdkit", "--unix", "-", "--readonly", *plugin_args(exported), "--run", convert])


def _run(argv: list[str]) -> None:
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        ours = [line for line in lines if line.startswith(PLUGIN_ERROR)]
        if ours:  # the plugin's own line names the damaged file and offset
            raise VbError(ours[0][len(PLUGIN_ERROR) :].strip())
        raise VbError(f"{argv[0]} failed: {lines[-1].strip() if lines else 'no message'}")
