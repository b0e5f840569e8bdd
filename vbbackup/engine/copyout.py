"""Stream one disk at one point in time into a new sparse image (``vbmount copy``, restore).

Raw images and qcow2 images with options we can lay out are written in this process
(``imagewrite``: the view's checked reads, ``pwrite``, ``qemu-img check``). For the rest
(compressed clusters, preallocation, other qcow2 options, block devices) the view is
served by our nbdkit plugin on a private unix socket, and ``qemu-img convert`` copies
from it (both are our children and die with us): it asks the export for block status,
so holes and zero ranges of the backup are never written and stay holes. The target
is created first with ``qemu-img create`` (qcow2 options from the set's
``*.qcow.json`` when present), written as ``OUT.partial``, fsync'ed, renamed::

    nbdkit -f --exit-with-parent -U S --readonly python vbmount.py dir=D disk=vda until=CP
    setpriv --pdeathsig KILL qemu-img convert -n --target-is-zero -f raw \\
        nbd+unix:///?socket=S OUT.partial
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from vbbackup.chain import BackupSet, PointInTimeView
from vbbackup.engine import imagewrite
from vbbackup.engine.imagewrite import Progress
from vbbackup.errors import TargetExistsError, UsageError, VbError
from vbbackup.fsutil import atomic_path
from vbbackup.nbdio.server import PLUGIN, Export, NbdkitServer, plugin_args  # noqa: F401

PLUGIN_ERROR = "vbmount: error:"  # how the plugin reports a read it refused (damaged data)
FORMATS = ("qcow2", "raw")

# qemu-img info's format-specific qcow2 keys -> qemu-img create -o names.
_QCOW2_KEYS = {
    "compat": "compat",
    "lazy-refcounts": "lazy_refcounts",
    "refcount-bits": "refcount_bits",
    "extended-l2": "extended_l2",
    "compression-type": "compression_type",
}


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
    compress: bool = False,
    progress: Progress | None = None,
    direct: bool | None = None,
) -> None:
    """Write `export` to the new image `output` (format `fmt`), sparse and atomically.

    `preallocation` (qemu-img's: "metadata", "falloc", "full") reserves the space up front.
    The image is written in this process (``imagewrite``) unless `direct` is False or it
    needs what only ``qemu-img convert`` writes (compressed clusters, preallocation, qcow2
    options the direct writer does not have). `progress` gets the bytes written so far
    (direct writes only).
    """
    if fmt not in FORMATS:
        raise VbError(f"unsupported image format {fmt!r} (use qcow2 or raw)")
    if compress and fmt != "qcow2":
        raise UsageError("--compress writes qcow2's compressed clusters: a qcow2 output only")
    output = Path(output)
    if output.exists() and not overwrite:
        raise TargetExistsError(f"{output} already exists; refusing to overwrite it (--force)")
    backup = BackupSet(export.directory)
    point = backup.resolve(export.disk, export.until, export.files)
    saved = backup.qemu_info(point)
    direct_options = imagewrite.qcow2_options(saved) if fmt == "qcow2" else None
    writable = fmt == "raw" or direct_options is not None
    if direct is not False and writable and not compress and not preallocation:
        with atomic_path(output, overwrite=True) as tmp, PointInTimeView(point) as view:
            tmp.unlink(missing_ok=True)
            imagewrite.write_image(view, tmp, fmt, direct_options, progress)
        return
    options = qcow2_options(saved) if fmt == "qcow2" else ""
    if preallocation:
        options = ",".join(filter(None, [options, f"preallocation={preallocation}"]))
    # checked above with the CLI's hint; the partial is ours to replace
    with atomic_path(output, overwrite=True) as tmp:
        tmp.unlink(missing_ok=True)
        create = ["qemu-img", "create", "-q", "-f", fmt]
        _run([*create, *(["-o", options] if options else []), str(tmp), str(point.virtual_size)])
        # -W (writes out of order) for raw only: 10-30% faster here, but in a
        # qcow2 it would allocate clusters out of the disk's order.
        order = ["-W"] if fmt == "raw" else []
        exported = Export(export.directory, point.disk or export.disk, export.until,
                          export.files)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="vbbackup-copy-") as work:
            workdir = Path(work)
            # Both helpers are our children and die with us, even on SIGKILL: nbdkit by
            # --exit-with-parent (tied), qemu-img by setpriv's parent-death signal; a
            # killed restore leaves its .partial and nothing running.
            server = NbdkitServer(plugin_args(exported), socket=workdir / "nbd.sock",
                                  workdir=workdir, tied=True)  # fmt: skip
            with server:
                if compress:
                    order.append("-c")
                convert = ["setpriv", "--pdeathsig", "KILL", "qemu-img", "convert", *order,
                           "-n", "--target-is-zero", "-f", "raw", "-O", fmt, server.uri,
                           str(tmp)]  # fmt: skip
                try:
                    _run(convert)
                except VbError:
                    refused = _plugin_error(server.log)
                    if refused:  # the plugin's own line names the damaged file and offset
                        raise VbError(refused) from None
                    raise


def copy_to_device(export: Export, device: Path) -> None:
    """Write `export` over an existing block device (``restore --target vda=/dev/...``): raw,
    every byte of the disk, holes as zeroes (qemu-img writes zeroes or discards as the device
    allows), flushed before it returns. The device must not be in use and at least the disk's
    virtual size; what lies beyond is left alone."""
    backup = BackupSet(export.directory)
    point = backup.resolve(export.disk, export.until, export.files)
    check_device(device, point.virtual_size)
    exported = Export(export.directory, point.disk or export.disk, export.until, export.files)
    with tempfile.TemporaryDirectory(prefix="vbbackup-copy-") as work:
        workdir = Path(work)
        server = NbdkitServer(plugin_args(exported), socket=workdir / "nbd.sock",
                              workdir=workdir, tied=True)  # fmt: skip
        with server:
            # the export is as long as the disk, so qemu-img writes [0, virtual size) only
            convert = ["setpriv", "--pdeathsig", "KILL", "qemu-img", "convert", "-n", "-W",
                       "-f", "raw", "-O", "raw", server.uri, str(device)]  # fmt: skip
            try:
                _run(convert)
            except VbError:
                refused = _plugin_error(server.log)
                if refused:
                    raise VbError(refused) from None
                raise
    fd = os.open(device, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_device(device: Path, size: int) -> None:
    """A block device, not in use (O_EXCL: not mounted, not an LVM PV or dm member), big
    enough for a disk of ``size`` bytes."""
    try:
        mode = os.stat(device).st_mode
    except OSError as err:
        raise UsageError(f"--target {device}: {err.strerror}") from None
    if not stat.S_ISBLK(mode):
        raise UsageError(f"--target {device} is not a block device (give -o for image files)")
    try:
        fd = os.open(device, os.O_RDONLY | os.O_EXCL)
    except OSError as err:
        raise TargetExistsError(
            f"--target {device} is in use ({err.strerror}): mounted, or a member of a "
            "volume group or device-mapper table"
        ) from None
    try:
        available = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    if available < size:
        raise UsageError(
            f"--target {device} holds {available} bytes, the disk needs {size}: a device at "
            "least the disk's virtual size"
        )


def _plugin_error(log: Path) -> str | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    ours = [line for line in lines if line.startswith(PLUGIN_ERROR)]
    return ours[0][len(PLUGIN_ERROR) :].strip() if ours else None


def _run(argv: list[str]) -> None:
    done = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise VbError(f"{argv[0]} failed: {lines[-1].strip() if lines else 'no message'}")
