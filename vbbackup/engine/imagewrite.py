"""Write a point in time straight into a new raw or qcow2 image, without an NBD hop.

``qemu-img convert`` from our nbdkit plugin moves every byte through a
socket twice and Python's nbdkit threads once more; restore ran at half
the speed of ``qemu-img convert`` of the same disk from a raw file. Here
the view's own checked reads (``PointInTimeView.readinto``: checksums,
lz4) fill buffers that a few threads ``pwrite`` into the image: for raw at
the disk's offsets, for qcow2 at the places a one-pass layout gave them
(``vbbackup.format.qcow2``). Holes are never written, nor pieces that read
as zeroes: the file stays sparse. The qcow2 is checked with ``qemu-img
check`` before it is handed back. What this cannot write (compressed
clusters, preallocation, qcow2 options QEMU has and we do not: old compat,
other refcount widths, extended L2, an external data file) stays with
``qemu-img convert``.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from vbbackup.chain import PointInTimeView
from vbbackup.errors import VbError
from vbbackup.format.qcow2 import Qcow2Layout, Qcow2Options, cluster_runs

PIECE = 4 * 1024 * 1024  # bytes one read and one write move
WORKERS = 3  # 2 cores: one thread may wait for the disk while two copy
_ZEROS = bytes(PIECE)

Progress = Callable[[int], None]  # bytes written so far


def qcow2_options(qemu_info: dict[str, Any] | None) -> Qcow2Options | None:
    """The options of the set's saved ``qemu-img info`` this writer keeps, or None when the
    image had one it cannot write (then ``qemu-img`` recreates it)."""
    if not qemu_info or qemu_info.get("format") != "qcow2":
        return Qcow2Options()
    data = qemu_info.get("format-specific", {}).get("data", {})
    if str(data.get("compat", "1.1")) != "1.1":
        return None
    if data.get("refcount-bits", 16) != 16 or data.get("extended-l2", False):
        return None
    if data.get("data-file") or data.get("encrypt"):
        return None
    try:
        return Qcow2Options(
            cluster_size=int(qemu_info.get("cluster-size", 65536)),
            lazy_refcounts=bool(data.get("lazy-refcounts", False)),
            compression_type=str(data.get("compression-type", "zlib")),
        )
    except ValueError:
        return None


def write_image(
    view: PointInTimeView,
    target: Path,
    fmt: str,
    options: Qcow2Options | None = None,
    progress: Progress | None = None,
) -> None:
    """Fill the new file ``target`` (created here; the caller fsyncs and renames it)."""
    data = [(off, n) for off, n, zero in view.extents(0, view.size) if not zero]
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as err:
        raise VbError(f"cannot create {target}: {err.strerror}") from None
    try:
        if fmt == "raw":
            _truncate(fd, target, view.size)
            _copy(view, fd, target, _raw_pieces(data), progress)
        elif fmt == "qcow2":
            chosen = options or Qcow2Options()
            layout = Qcow2Layout(view.size, cluster_runs(data, chosen.cluster_size), chosen)
            _truncate(fd, target, layout.file_size)
            _copy(view, fd, target, layout.copies(PIECE), progress)
            for offset, metadata in layout.metadata():
                _pwrite(fd, target, memoryview(metadata), offset)
        else:
            raise VbError(f"unsupported image format {fmt!r} (use qcow2 or raw)")
    finally:
        os.close(fd)
    if fmt == "qcow2":
        _qemu_img_check(target)


def _raw_pieces(data: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    for offset, length in data:
        end = offset + length
        while offset < end:
            n = min(PIECE - offset % PIECE, end - offset)  # pieces aligned as the disk's
            yield offset, n, offset
            offset += n


def _copy(
    view: PointInTimeView,
    fd: int,
    target: Path,
    pieces: Iterator[tuple[int, int, int]],
    progress: Progress | None,
) -> None:
    """Read and write the pieces in WORKERS threads; the first error stops all of them."""
    lock = threading.Lock()
    failed: list[BaseException] = []
    done = [0]

    def work() -> None:
        buf = memoryview(bytearray(PIECE))
        while not failed:
            with lock:
                piece = next(pieces, None)
            if piece is None:
                return
            disk_offset, length, file_offset = piece
            dst = buf[:length]
            try:
                view.readinto(dst, disk_offset)
                if dst != _ZEROS[:length]:  # a piece of zeroes stays a hole
                    _pwrite(fd, target, dst, file_offset)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                failed.append(err)
                return
            with lock:
                done[0] += length
                if progress is not None:
                    progress(done[0])

    threads = [threading.Thread(target=work, daemon=True) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():  # a timed join lets SIGINT/SIGTERM through
                thread.join(0.2)
    except BaseException:
        failed.append(VbError("interrupted"))
        for thread in threads:
            thread.join()
        raise
    if failed:
        raise failed[0]


def _pwrite(fd: int, target: Path, data: memoryview, offset: int) -> None:
    try:
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
    except OSError as err:
        raise VbError(f"cannot write {target}: {err.strerror}") from None


def _truncate(fd: int, target: Path, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as err:
        raise VbError(f"cannot size {target}: {err.strerror}") from None


def _qemu_img_check(target: Path) -> None:
    """QEMU's own consistency check of the image we laid out (metadata only: fast)."""
    done = subprocess.run(
        ["qemu-img", "check", "-q", "-f", "qcow2", str(target)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise VbError(
            f"the new image {target} failed qemu-img check: "
            f"{lines[-1].strip() if lines else f'exit {done.returncode}'}"
        )
