"""``vbbackup restore``: each disk written once, in its state at the chosen point.

No replay: a disk's point in time (full + incrementals, or + a
differential) is one merged view (``vbbackup.chain``), which
``engine.copyout`` streams into a new sparse image. Plan first, then
write::

    plan     resolve every disk's point, name its image, check no target
             exists (unless --force): nothing is written if any check fails
    disks    copy_out(view -> OUTDIR/<image>.partial -> rename), one by one
    boot     nvram/kernel/initrd (and loader if gone) the backup saved
    config   the saved domain XML; --adjust-config rewrites it, --define
             registers it with libvirt
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import libvirt
from lxml import etree

from vbbackup.chain import COPY, BackupSet, PointInTime, open_view
from vbbackup.engine.copyout import FORMATS, Export, check_device, copy_out, copy_to_device
from vbbackup.engine.lock import directory_lock
from vbbackup.errors import ChainError, LibvirtError, TargetExistsError, UsageError, VbError
from vbbackup.fsutil import atomic_output, partial_path, run_log, write_small_file
from vbbackup.virt import domainxml, tpmstate
from vbbackup.virt.connection import error_text, libvirt_connection

log = logging.getLogger("vbbackup.restore")

# (disk being written, its bytes written so far); called from a helper thread
Progress = Callable[["DiskPlan", int], None]


@dataclass(frozen=True)
class RestoreConfig:
    directory: Path
    output: Path
    until: str | None = None
    disks: tuple[str, ...] = ()
    fmt: str | None = None  # None: the disk's format at backup time
    preallocate: bool = False
    adjust_config: bool = False
    name: str | None = None
    define: bool = False
    uri: str = "qemu:///system"
    force: bool = False
    sequence: tuple[str, ...] = ()  # explicit data files of one disk, in order (--sequence)
    compress: bool = False  # qcow2 compressed clusters
    targets: tuple[tuple[str, Path], ...] = ()  # --target vda=/dev/vg0/web01: onto a device


@dataclass(frozen=True)
class DiskPlan:
    disk: str
    point: PointInTime
    until: str | None
    image: Path
    fmt: str
    data_bytes: int
    warning: str | None = None  # its data cannot be checked as it is read (no .sums)
    files: tuple[str, ...] | None = None  # --sequence
    device: bool = False  # written over an existing block device (--target)
    holes: tuple[tuple[int, int], ...] = ()  # (offset, length) reading as zeroes at the point


@dataclass(frozen=True)
class RestoredDisk:
    disk: str
    image: Path
    fmt: str
    point: str
    virtual_size: int
    data_bytes: int
    seconds: float


@dataclass
class RestoreResult:
    disks: list[RestoredDisk] = field(default_factory=list)
    boot_files: list[Path] = field(default_factory=list)
    config: Path | None = None
    defined: str | None = None
    autostart: bool = False  # --define: set, as the domain had it at backup time
    tpm_state: Path | None = None  # --define: where the saved vTPM state was put


@dataclass(frozen=True)
class Plan:
    """Everything restore will write, decided before the first byte is."""

    disks: tuple[DiskPlan, ...]
    xml_path: Path | None
    domain: str
    config_out: Path | None
    boot: dict[str, tuple[Path, Path]]  # <os> element -> (saved copy, restored path)

    @property
    def data_bytes(self) -> int:
        return sum(d.data_bytes for d in self.disks)


def plan(config: RestoreConfig) -> Plan:
    """Resolve points, image names and targets; raise before anything is written."""
    if config.fmt is not None and config.fmt not in FORMATS:
        raise UsageError(f"unsupported image format {config.fmt!r} (use qcow2 or raw)")
    backup = BackupSet(config.directory)
    names = config.disks or backup.disks
    files = config.sequence or None
    if files is not None:
        if config.until is not None or len(config.disks) > 1:
            raise UsageError("--sequence names one disk's files in order: no --until, one --disk")
        point = backup.resolve(None, None, files)
        disk = point.disk or point.meta.disk_name
        if config.disks and config.disks[0] != disk:
            raise UsageError(f"--sequence holds files of {disk}, not of {config.disks[0]}")
        names = (disk,)
        points: dict[str, tuple[PointInTime, str | None]] = {disk: (point, None)}
    else:
        points = {disk: _point(backup, disk, config.until) for disk in names}
    if config.compress and config.fmt == "raw":
        raise UsageError("--compress writes qcow2's compressed clusters: not with --format raw")
    # the point that names the side files: a chain's, unless every disk is a copy
    main = next((p for p, u in points.values() if u != COPY), next(iter(points.values()))[0])
    xml_path = _saved_xml(backup, main)
    tree = domainxml.parse(xml_path) if xml_path else None
    saved = domainxml.saved_disks(tree) if tree is not None else {}
    output = Path(config.output)
    disks = []
    taken: set[str] = set()
    devices = dict(config.targets)
    for target in devices:
        if target not in points:
            raise UsageError(f"--target {target}: no such disk in this restore "
                             f"({', '.join(points)})")  # fmt: skip
    for disk, (point, until) in points.items():
        if disk in devices:
            check_device(devices[disk], point.virtual_size)
            image, fmt = devices[disk], "raw"
        else:
            fmt = config.fmt or (
                "qcow2" if config.compress else _backup_format(point, saved.get(disk))
            )
            image = output / _image_name(disk, fmt, saved.get(disk), taken)
            taken.add(image.name)
        with open_view(backup.directory, disk, until, files) as view:
            runs = view.extents(0, view.size)
            warning = view.unchecked_warning()
        data = sum(n for _, n, zero in runs if not zero)
        holes = tuple((o, n) for o, n, zero in runs if zero)
        disks.append(DiskPlan(disk, point, until, image, fmt, data, warning, files,
                              device=disk in devices, holes=holes))  # fmt: skip
    domain = domainxml.domain_name(tree) if tree is not None else ""
    adjust = config.adjust_config or config.define
    if adjust and tree is None:
        raise ChainError(f"no saved domain XML (vmconfig.*.xml) in {backup.directory}")
    if adjust and not config.name and not domain:
        raise UsageError(
            f"the saved domain XML {xml_path} has no <name>: give the restored domain one "
            "with --name"
        )
    new_name = config.name or f"restore_{domain}"
    if config.define:
        _refuse_existing_domain(config.uri, new_name)
    config_out = None
    if xml_path is not None:
        config_out = output / (f"{new_name}.xml" if adjust else xml_path.name)
    boot = _boot_plan(backup.directory, tree, output, main) if tree is not None else {}
    result = Plan(tuple(disks), xml_path, domain, config_out, boot)
    _refuse_non_files(result)
    if not config.force:
        _refuse_existing(result)
    return result


def named(the_plan: Plan, output: Path, name: str, *, force: bool = False) -> Plan:
    """The plan with the restored domain's XML named after ``name`` instead of
    ``restore_<original>``, refused as ``plan`` refuses when that file exists."""
    if the_plan.config_out is None:
        return the_plan
    result = replace(the_plan, config_out=Path(output) / f"{name}.xml")
    if not force:
        _refuse_existing(result)
    return result


def restore(
    config: RestoreConfig, restore_plan: Plan | None = None, progress: Progress | None = None
) -> RestoreResult:
    """Write every planned image, boot file and the domain XML; define it if asked."""
    output = Path(config.output)
    with directory_lock(output, "restoring into it"):
        the_plan = restore_plan or plan(config)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise VbError(f"cannot create restore directory {output}: {err.strerror}") from None
        # what was restored from where (virtnbdrestore's -L), always
        with run_log(_log_path(output), "restore log", done="done"):
            log.info("vbbackup restore of %s into %s", config.directory, output)
            return _restore(config, the_plan, progress)


def _log_path(output: Path) -> Path:
    """``restore.<time>.log`` in OUTDIR (a new name for each run)."""
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    path = output / f"restore.{stamp}.log"
    n = 1
    while path.exists():
        path, n = output / f"restore.{stamp}.{n}.log", n + 1
    return path


def _restore(config: RestoreConfig, the_plan: Plan, progress: Progress | None) -> RestoreResult:
    result = RestoreResult()
    for disk in the_plan.disks:
        started = time.monotonic()
        if disk.device:
            copy_to_device(Export(Path(config.directory), disk.disk, disk.until, disk.files),
                           disk.image)  # fmt: skip
            if progress is not None:
                progress(disk, disk.data_bytes)
        else:
            with _PartialWatcher(disk, progress, poll=not config.preallocate):
                copy_out(
                    Export(Path(config.directory), disk.disk, disk.until, disk.files),
                    disk.image,
                    disk.fmt,
                    overwrite=config.force,
                    preallocation="falloc" if config.preallocate else None,
                    compress=config.compress,
                )
        log.info("%s: %s -> %s (%s%s), %d data bytes, %.1f s", disk.disk,
                 ",".join(f.path.name for f in disk.point.files), disk.image, disk.fmt,
                 ", compressed" if config.compress else "", disk.data_bytes,
                 time.monotonic() - started)  # fmt: skip
        result.disks.append(
            RestoredDisk(
                disk=disk.disk,
                image=disk.image,
                fmt=disk.fmt,
                point=disk.point.name,
                virtual_size=disk.point.virtual_size,
                data_bytes=disk.data_bytes,
                seconds=time.monotonic() - started,
            )
        )
    result.boot_files += copy_boot_files(the_plan, config.force)
    for path in result.boot_files:
        log.info("boot file: %s", path)
    if the_plan.xml_path is not None and the_plan.config_out is not None:
        if config.adjust_config or config.define:
            xml = _adjusted_xml(config, the_plan)
            write_small_file(the_plan.config_out, xml, overwrite=config.force)
            if config.define:
                result.defined = _define(config.uri, xml)
                log.info("defined domain %s", result.defined)
                if saved_autostart(the_plan.xml_path):
                    _set_autostart(config.uri, result.defined)
                    result.autostart = True
                    log.info("autostart on, as %s had it", the_plan.domain)
                tpm = saved_tpm_state(the_plan.xml_path)
                if tpm is not None:
                    result.tpm_state = _restore_tpm_state(config.uri, result.defined, tpm)
                    log.info("vTPM state %s put into %s", tpm.name, result.tpm_state)
        else:
            _copy_file(the_plan.xml_path, the_plan.config_out, config.force)
        result.config = the_plan.config_out
    return result


def _point(backup: BackupSet, disk: str, until: str | None) -> tuple[PointInTime, str | None]:
    """The disk's point at ``until``; a disk saved only as a copy restores its copy."""
    points = backup.points(disk)
    if all(p.name == COPY for p in points):
        return points[-1], COPY
    return backup.resolve(disk, until), until


def _saved_xml(backup: BackupSet, point: PointInTime) -> Path | None:
    """``vmconfig.<ident>.xml`` of the point; else the newest one saved."""
    path = backup.directory / f"vmconfig.{point.side_ident}.xml"
    if path.is_file():
        return path
    saved = sorted(backup.directory.glob("vmconfig.*.xml"), key=lambda p: p.stat().st_mtime)
    return saved[-1] if saved else None


def _backup_format(point: PointInTime, saved: domainxml.DomainDisk | None) -> str:
    for fmt in (point.meta.disk_format, saved.format if saved else None):
        if fmt in FORMATS:
            return str(fmt)
    return "qcow2"


def _image_name(disk: str, fmt: str, saved: domainxml.DomainDisk | None, taken: set[str]) -> str:
    """The source image's file name (format suffix swapped if the format changed)."""
    fallback = f"{disk}.{fmt}"
    source = (saved.path or saved.source_name) if saved is not None else None
    if saved is None or not source:
        return fallback
    name = Path(source).name
    if saved.format != fmt:
        stem = Path(name).stem if Path(name).suffix in (".qcow2", ".raw", ".img") else name
        name = f"{stem}.{fmt}"
    if name in taken or name.endswith(".partial"):
        return fallback
    return name


def _boot_plan(
    directory: Path, tree: etree._ElementTree, output: Path, point: PointInTime
) -> dict[str, tuple[Path, Path]]:
    """Saved boot files (``<basename>.<ident>``, or ``<basename>`` for a copy) to restore."""
    plan_: dict[str, tuple[Path, Path]] = {}
    ident = point.side_ident
    for element, original in domainxml.boot_files(tree).items():
        base = Path(original).name
        if element == "loader" and Path(original).exists():
            continue  # shared, read-only firmware: the XML keeps pointing at it
        candidates = [directory / f"{base}.{ident}", directory / base]
        candidates += sorted(directory.glob(f"{base}.*"), key=lambda p: p.stat().st_mtime)[::-1]
        saved = next(
            (p for p in candidates if p.is_file() and not p.name.endswith(".partial")), None
        )
        if saved is not None:
            plan_[element] = (saved, output / base)
    return plan_


def _refuse_existing(the_plan: Plan) -> None:
    for target in _targets(the_plan):
        if target.exists():
            raise TargetExistsError(f"{target} already exists; refusing to overwrite it (--force)")


def _targets(the_plan: Plan) -> list[Path]:
    """Files restore creates (a --target device is written over, by request)."""
    targets = [d.image for d in the_plan.disks if not d.device]
    targets += [t for _, t in the_plan.boot.values()]
    if the_plan.config_out is not None:
        targets.append(the_plan.config_out)
    return targets


def _refuse_non_files(the_plan: Plan) -> None:
    """--force replaces files (or writes into a block device), never a directory."""
    for target in _targets(the_plan):
        if target.is_dir():
            raise TargetExistsError(
                f"{target} is a directory; a restore replaces files only (--force or not)"
            )


def _refuse_existing_domain(uri: str, name: str) -> None:
    """--define: checked before a byte is written, so no images are left behind."""
    with libvirt_connection(uri) as conn:
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError:
            return
    raise TargetExistsError(
        f"a domain named {name!r} exists already; --define needs a new name (--name)"
    )


def copy_boot_files(the_plan: Plan, overwrite: bool) -> list[Path]:
    """The boot files (NVRAM, kernel, initrd) the plan restores; their new paths."""
    done = []
    for saved, target in the_plan.boot.values():
        _copy_file(saved, target, overwrite)
        done.append(target)
    return done


def _copy_file(source: Path, target: Path, overwrite: bool) -> None:
    with open(source, "rb") as src, atomic_output(target, overwrite=overwrite) as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)


def _adjusted_xml(config: RestoreConfig, the_plan: Plan) -> bytes:
    if the_plan.xml_path is None:
        raise ChainError("no saved domain XML to adjust")
    tree = domainxml.parse(the_plan.xml_path)
    images = {d.disk: (d.image.resolve(), d.fmt) for d in the_plan.disks}
    boot = {element: target.resolve() for element, (_, target) in the_plan.boot.items()}
    name = config.name or f"restore_{the_plan.domain}"
    return domainxml.adjust(tree, name, images, boot, config.output.resolve())


def _saved_state(xml_path: Path) -> dict[str, Any]:
    """``domain.<ident>.json`` beside ``vmconfig.<ident>.xml`` ({} when not recorded: a
    virtnbdbackup set, an older vbbackup)."""
    ident = xml_path.name.removeprefix("vmconfig.").removesuffix(".xml")
    try:
        state = json.loads((xml_path.parent / f"domain.{ident}.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def saved_autostart(xml_path: Path) -> bool:
    """The saved domain state says autostart was on."""
    return _saved_state(xml_path).get("autostart") is True


def saved_tpm_state(xml_path: Path) -> Path | None:
    """The vTPM state archive the backup saved with this configuration, if any."""
    name = _saved_state(xml_path).get("vtpm_state")
    if not isinstance(name, str) or "/" in name:
        return None
    path = xml_path.parent / name
    return path if path.is_file() else None


def _restore_tpm_state(uri: str, name: str, archive: Path) -> Path:
    with libvirt_connection(uri) as conn:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as err:
            raise LibvirtError(f"{name}: {error_text(err)}") from None
        return put_tpm_state(conn, dom, archive)


def put_tpm_state(conn: libvirt.virConnect, dom: libvirt.virDomain, archive: Path) -> Path:
    """Put the saved vTPM state under the defined domain's UUID, before it first starts."""
    try:
        target = tpmstate.state_dir(dom.UUIDString(), conn.getURI())
    except libvirt.libvirtError as err:
        raise LibvirtError(f"{dom.name()}: {error_text(err)}") from None
    if target is None:
        raise VbError(f"{dom.name()} is defined on a remote host: its vTPM state {archive} is "
                      "not put back (copy it into libvirt's swtpm directory there)")  # fmt: skip
    tpmstate.put_back(archive, target)
    return target


def _set_autostart(uri: str, name: str) -> None:
    with libvirt_connection(uri) as conn:
        try:
            conn.lookupByName(name).setAutostart(1)
        except libvirt.libvirtError as err:
            raise LibvirtError(f"{name}: setting autostart failed: {error_text(err)}") from None


def _define(uri: str, xml: bytes) -> str:
    with libvirt_connection(uri) as conn:
        try:
            return str(conn.defineXML(xml.decode("utf-8")).name())
        except libvirt.libvirtError as err:
            raise LibvirtError(f"defining the restored domain failed: {error_text(err)}") from None


class _PartialWatcher:
    """Report a disk's progress from the allocated size of its growing ``.partial`` image.

    copy_out runs qemu-img in a child process; the bytes it has allocated in
    the target are the honest measure of how far it got (capped at the
    disk's data size; the rest is reported when the copy ends). A
    preallocated image is fully allocated at once, so it is not polled.
    """

    _PERIOD = 0.25

    def __init__(self, disk: DiskPlan, progress: Progress | None, *, poll: bool = True) -> None:
        self._disk = disk
        self._poll = poll
        self._progress = progress
        self._reported = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _PartialWatcher:
        if self._progress is not None and self._poll:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        if exc_type is None:
            self._report(self._disk.data_bytes)

    def _run(self) -> None:
        partial = partial_path(self._disk.image)
        while not self._done.wait(self._PERIOD):
            try:
                allocated = os.stat(partial).st_blocks * 512
            except OSError:
                continue
            self._report(min(allocated, self._disk.data_bytes))

    def _report(self, done: int) -> None:
        if done > self._reported and self._progress is not None:
            self._progress(self._disk, done)
            self._reported = done
