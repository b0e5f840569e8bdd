"""``vbbackup restore --live``: the VM runs from its backup at once and ends up on local
storage, without a reboot.

    plan     as restore: every disk's point, image names in OUTDIR, nothing existing
    serve    per disk nbdkit with our plugin, read-only, on a unix socket in
             /var/tmp/vbbackup-live-<name>/ (QEMU must reach it)
    images   OUTDIR/<image>.qcow2 whose backing file is that export (raw)
    run      the saved domain XML made safe as --adjust-config does, on those images,
             defined persistently and started; the running definition has error
             policy 'stop' (the persistent one is left as saved)
    pull     a libvirt block pull per disk (QEMU's stream job) copies every cluster the
             image does not have yet from the export; guest writes land in the image
             and a pull never overwrites a cluster the image has
    finish   QEMU drops the backing as each pull completes; a pause and resume makes QEMU
             flush the images; then the servers stop and the state files go

Every step that matters is in a state file (``.vbbackup-live.json`` in OUTDIR, and
/var/lib/vbbackup/live/<name>.json to find it by name): the pulls run inside QEMU
and the servers are daemons, so a killed command stops nothing, and
``restore --live --resume NAME`` finishes the job after the command, nbdkit or the
host died (see docs/instant-recovery.md for what the guest sees meanwhile).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import libvirt

from vbbackup.engine.lock import directory_lock
from vbbackup.engine.restore import (
    Plan,
    RestoreConfig,
    copy_boot_files,
    named,
    plan,
    put_tpm_state,
    saved_autostart,
    saved_tpm_state,
)
from vbbackup.errors import (
    BackupInterrupted,
    LibvirtError,
    MountError,
    TargetExistsError,
    UsageError,
    VbError,
)
from vbbackup.fsutil import fsync_dir, write_small_file
from vbbackup.nbdio import proc
from vbbackup.nbdio.server import (
    Export,
    NbdkitServer,
    give_socket_to_qemu,
    plugin_args,
    stop_server,
    unix_uri,
)
from vbbackup.virt import domainxml
from vbbackup.virt.connection import error_text, libvirt_connection
from vbbackup.virt.job import signals_raise

WORK_ROOT = Path("/var/tmp")
STATE_NAME = ".vbbackup-live.json"
POLL = 0.25
JOB_GRACE = 10.0  # seconds a finished job may take to show in the domain XML
START_ATTEMPTS = 2  # resume: a domain that crashes right after our start is started once more
T = TypeVar("T")

# (disk target, bytes copied, bytes to copy); called from the monitoring loop
LiveProgress = Callable[[str, int, int], None]


def state_dir() -> Path:
    return Path(os.environ.get("VBBACKUP_LIVE_STATE", "/var/lib/vbbackup/live"))


@dataclass(frozen=True)
class LiveConfig:
    directory: Path
    output: Path
    until: str | None = None
    disks: tuple[str, ...] = ()
    name: str | None = None
    uri: str = "qemu:///system"
    bandwidth: float | None = None  # MiB/s per disk; None: as fast as it goes


@dataclass
class LiveDisk:
    target: str
    image: str
    socket: str
    pid: int | None = None
    marker: str | None = None


@dataclass
class LiveState:
    """What a live restore needs to be finished by a later run (``--resume``)."""

    name: str
    uri: str
    directory: str
    until: str | None
    output: str
    workdir: str
    disks: list[LiveDisk] = field(default_factory=list)

    def save(self) -> None:
        data = json.dumps(asdict(self), indent=2).encode() + b"\n"
        write_small_file(Path(self.output) / STATE_NAME, data)
        state_dir().mkdir(parents=True, exist_ok=True)
        write_small_file(state_dir() / f"{self.name}.json", data)

    def remove(self) -> None:
        for path in (Path(self.output) / STATE_NAME, state_dir() / f"{self.name}.json"):
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)

    @classmethod
    def load(cls, name: str) -> LiveState:
        path = state_dir() / f"{name}.json"
        try:
            raw = json.loads(path.read_text())
            raw["disks"] = [LiveDisk(**d) for d in raw["disks"]]
            return cls(**raw)
        except FileNotFoundError:
            raise UsageError(
                f"no live restore of {name} to resume ({path} does not exist)"
            ) from None
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise VbError(f"{path}: unreadable live-restore state: {err}") from None


@dataclass
class LiveResult:
    name: str
    output: Path
    images: dict[str, Path]
    running_seconds: float | None  # None: the domain was running already (resume)
    complete_seconds: float
    resumed: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "output": str(self.output),
            "images": {k: str(v) for k, v in self.images.items()},
            "running_seconds": self.running_seconds,
            "complete_seconds": self.complete_seconds,
            "resumed": self.resumed,
        }


def live_restore(
    config: LiveConfig,
    progress: LiveProgress | None = None,
    running: Callable[[str, float], None] | None = None,
) -> LiveResult:
    """Start the VM on images over its backup, pull the data in, return when it is done."""
    started = time.monotonic()
    the_plan, name = _plan(config)
    output = Path(config.output)
    with directory_lock(output, "restoring into it"):
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise VbError(f"cannot create restore directory {output}: {err.strerror}") from None
        workdir = WORK_ROOT / f"vbbackup-live-{name}"
        state = LiveState(name, config.uri, str(Path(config.directory).resolve()), config.until,
                          str(output.resolve()), str(workdir))  # fmt: skip
        with libvirt_connection(config.uri) as conn, signals_raise():
            dom = _set_up(conn, the_plan, state)
            since_start = time.monotonic() - started
            if running is not None:
                running(name, since_start)
            with _going_on(name):
                _pull_all(dom, state, config.bandwidth, progress)
                _finish(dom, state)
    images = {d.target: Path(d.image) for d in state.disks}
    return LiveResult(name, output, images, since_start, time.monotonic() - started)


def resume(
    name: str,
    bandwidth: float | None = None,
    progress: LiveProgress | None = None,
    uri: str | None = None,
    restart: bool = False,
    say: Callable[[str], None] = print,
) -> LiveResult:
    """Finish a live restore that a killed command, a dead server or a reboot left;
    ``restart``: a running domain whose server died is stopped and started again."""
    started = time.monotonic()
    state = LiveState.load(name)
    lock = directory_lock(Path(state.output), "resuming the live restore into it")
    with lock, libvirt_connection(uri or state.uri) as conn, signals_raise():
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            raise VbError(
                f"domain {name} no longer exists; its images are in {state.output} "
                f"(remove {state_dir() / (name + '.json')} to forget this live restore)"
            ) from None
        if dom.isActive():
            backed = domainxml.backed_targets(dom.XMLDesc(0))
            lost = [d.target for d in state.disks if d.target in backed and not _serving(d)]
            if lost and not restart:
                raise MountError(
                    f"{', '.join(lost)}: the backup's server died and QEMU cannot connect to a "
                    f"new one; {name} pauses at its first read of data not copied yet. Restart "
                    f"it on its images (a cold boot; every write it made is kept): "
                    f"vbbackup restore --resume {name} --restart"
                )
            if lost:
                _stop_gracefully(dom)
        running_seconds: float | None = None
        for attempt in range(START_ATTEMPTS):
            started_here = not dom.isActive()
            if started_here:
                _ensure_servers(state, state.disks)
                _reattach_backing(state)
                _start(dom, conn)
                running_seconds = time.monotonic() - started
            else:
                status, reason = dom.state()
                io_error = reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR
                if status == libvirt.VIR_DOMAIN_PAUSED and io_error:
                    _call(dom.resume, f"resuming {name} after its I/O error")
            try:
                with _going_on(name):
                    _pull_all(dom, state, bandwidth, progress)
                    _finish(dom, state)
                break
            except LibvirtError:
                # QEMU 7.2 now and then dies (SIGSEGV) seconds after a restart whose pulls
                # begin at once; the images keep everything, so the same start once more
                crashed = dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF,
                                          libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]  # fmt: skip
                if not (started_here and crashed) or attempt + 1 == START_ATTEMPTS:
                    raise
                say(f"{name}: QEMU crashed (/var/log/libvirt/qemu/{name}.log); starting it again")
    images = {d.target: Path(d.image) for d in state.disks}
    return LiveResult(name, Path(state.output), images, running_seconds,
                      time.monotonic() - started, resumed=True)  # fmt: skip


# -- set up -----------------------------------------------------------------------------


def _plan(config: LiveConfig) -> tuple[Plan, str]:
    base = RestoreConfig(config.directory, config.output, config.until, config.disks,
                         fmt="qcow2", adjust_config=True, name=config.name,
                         uri=config.uri)  # fmt: skip
    first = plan(base)
    name = config.name or first.domain
    the_plan = first if config.name else named(first, Path(config.output), name)
    with libvirt_connection(config.uri) as conn:
        try:
            conn.lookupByName(name)
        except libvirt.libvirtError:
            pass
        else:
            raise TargetExistsError(
                f"a domain named {name!r} exists already; give the live-restored VM "
                "another name with --name"
            )
    if (state_dir() / f"{name}.json").exists():
        raise TargetExistsError(
            f"a live restore of {name} is unfinished: vbbackup restore --live --resume {name}"
        )
    return the_plan, name


@contextlib.contextmanager
def _going_on(name: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM while the data is pulled: the VM and its pulls go on (they run in
    QEMU, the servers are daemons); say how to finish."""
    try:
        yield
    except (KeyboardInterrupt, BackupInterrupted) as err:
        why = str(err) or "interrupted"
        raise BackupInterrupted(
            f"{why}: {name} keeps running and its disks keep being copied inside QEMU; "
            f"finish with vbbackup restore --live --resume {name}"
        ) from None


def _set_up(conn: libvirt.virConnect, the_plan: Plan, state: LiveState) -> libvirt.virDomain:
    """Servers, images, boot files, the domain defined and started; undone on failure."""
    workdir = Path(state.workdir)
    created: list[Path] = []
    dom = None
    try:
        workdir.mkdir(mode=0o755, exist_ok=True)
        workdir.chmod(0o755)
        for disk in the_plan.disks:
            live = LiveDisk(
                disk.disk, str(disk.image.resolve()), str(workdir / f"{disk.disk}.sock")
            )
            state.disks.append(live)
            _serve(live, Path(state.directory), disk.until, workdir)
            state.save()
            _create_image(Path(live.image), Path(live.socket), disk.point.virtual_size)
            _mark_zero(Path(live.image), list(disk.holes))
            created.append(Path(live.image))
        created += copy_boot_files(the_plan, overwrite=False)
        xml = _adjusted(the_plan, state)
        if the_plan.config_out is not None:
            config_out = Path(state.output) / f"{state.name}.xml"
            write_small_file(config_out, xml, overwrite=False)
            created.append(config_out)
        dom = _call(lambda: conn.defineXML(xml.decode()), f"defining {state.name}")
        state.save()
        if the_plan.xml_path is not None and saved_autostart(the_plan.xml_path):
            _call(lambda: dom.setAutostart(1), f"setting autostart of {state.name}")
        tpm = saved_tpm_state(the_plan.xml_path) if the_plan.xml_path is not None else None
        if tpm is not None:  # before the first start, or libvirt makes a new TPM
            put_tpm_state(conn, dom, tpm)
        _start(dom, conn)
        return dom
    except BaseException:
        if dom is not None:
            _undefine(dom)
        _stop_servers(state)
        for path in created:
            path.unlink(missing_ok=True)
        state.remove()
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _adjusted(the_plan: Plan, state: LiveState) -> bytes:
    if the_plan.xml_path is None:
        raise VbError(f"no saved domain XML (vmconfig.*.xml) in {state.directory}")
    images = {d.disk: (d.image.resolve(), "qcow2") for d in the_plan.disks}
    boot = {element: target.resolve() for element, (_, target) in the_plan.boot.items()}
    tree = domainxml.parse(the_plan.xml_path)
    return domainxml.adjust(tree, state.name, images, boot, Path(state.output))


def _serve(disk: LiveDisk, directory: Path, until: str | None, workdir: Path) -> None:
    socket = Path(disk.socket)
    socket.unlink(missing_ok=True)  # a dead server's
    server = NbdkitServer(plugin_args(Export(directory, disk.target, until)), workdir=workdir,
                          socket=socket, name=f"nbdkit-{disk.target}")  # fmt: skip
    with server:
        server.detach()
        disk.pid, disk.marker = server.pid, server.marker
    give_socket_to_qemu(socket)


def _create_image(image: Path, socket: Path, size: int) -> None:
    if image.exists():
        raise TargetExistsError(f"{image} already exists; refusing to overwrite it")
    proc.run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                   "-b", unix_uri(socket), str(image), str(size)],
                  what=f"creating {image}")  # fmt: skip
    fsync_dir(image.parent)


CLUSTER = 64 * 1024  # qcow2's default cluster size, as qemu-img create makes it
ZERO_PIECE = 1024 * 1024 * 1024
ZERO_BATCH = 2000  # qemu-io commands per run (its command line stays far below ARG_MAX)


def _mark_zero(image: Path, holes: list[tuple[int, int]]) -> None:
    """The point's zero extents written as qcow2 zero clusters before the guest starts: the
    pull skips what the image has, so it copies the data alone instead of the whole disk
    (whole clusters only; a pull copies the zero edges of a data cluster as they are)."""
    commands = []
    for offset, length in holes:
        start = -(-offset // CLUSTER) * CLUSTER
        end = (offset + length) // CLUSTER * CLUSTER
        for piece in range(start, end, ZERO_PIECE):  # qemu-io takes at most 2 GiB a write
            commands += ["-c", f"write -z {piece} {min(ZERO_PIECE, end - piece)}"]
    for i in range(0, len(commands), 2 * ZERO_BATCH):
        proc.run_tool(["qemu-io", "-f", "qcow2", *commands[i : i + 2 * ZERO_BATCH], str(image)],
                      what=f"marking the holes of {image}")  # fmt: skip


def _start(dom: libvirt.virDomain, conn: libvirt.virConnect) -> None:
    """Start with error policy 'stop' in the running definition only: define that, start,
    then put the persistent definition back as it was."""
    persistent = _persistent_xml(dom)
    _call(lambda: conn.defineXML(domainxml.stop_on_io_errors(persistent.encode()).decode()),
          f"defining {dom.name()}")  # fmt: skip
    try:
        _call(dom.create, f"starting {dom.name()}")
    finally:
        _call(lambda: conn.defineXML(persistent), f"defining {dom.name()}")


def _persistent_xml(dom: libvirt.virDomain) -> str:
    return str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))


def _undefine(dom: libvirt.virDomain) -> None:
    try:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError:
        pass


def _call(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except libvirt.libvirtError as err:
        raise LibvirtError(f"{what}: {error_text(err)}") from None


# -- resume -----------------------------------------------------------------------------


def _ensure_servers(state: LiveState, disks: list[LiveDisk]) -> None:
    """A running server for each of these disks; dead ones are started again."""
    workdir = Path(state.workdir)
    workdir.mkdir(mode=0o755, exist_ok=True)
    workdir.chmod(0o755)
    for disk in disks:
        if _serving(disk):
            continue
        _serve(disk, Path(state.directory), state.until, workdir)
        state.save()


def _serving(disk: LiveDisk) -> bool:
    return disk.pid is not None and proc.running(disk.pid, disk.marker)


def _stop_gracefully(dom: libvirt.virDomain, timeout: float = 60) -> None:
    """SIGTERM to QEMU, which flushes every image before it exits (a plain destroy could
    lose writes the guest was told are done)."""
    _call(lambda: dom.destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL),
          f"stopping {dom.name()}")  # fmt: skip
    deadline = time.monotonic() + timeout
    while dom.isActive():
        if time.monotonic() > deadline:
            raise LibvirtError(f"{dom.name()} did not stop in {timeout:.0f} s")
        time.sleep(POLL)


def _reattach_backing(state: LiveState) -> None:
    """A domain that is not running (host reboot, destroyed): an image whose pull completed
    may not have been flushed (its header says "no backing", some of its clusters may not
    be on disk). Pointing it at its export again is always safe: every cluster the image
    has is kept, every one it lacks is read from the backup again."""
    for disk in state.disks:
        image = Path(disk.image)
        if not _has_backing(image):
            proc.run_tool(["qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw",
                           "-b", unix_uri(Path(disk.socket)), str(image)],
                          what=f"pointing {image} at its backup again")  # fmt: skip


def _has_backing(image: Path) -> bool:
    info = json.loads(proc.run_tool(["qemu-img", "info", "-U", "--output=json", str(image)],
                                    what=f"reading {image}"))  # fmt: skip
    return bool(info.get("backing-filename"))


# -- pull and finish --------------------------------------------------------------------


def _pull_all(
    dom: libvirt.virDomain,
    state: LiveState,
    bandwidth: float | None,
    progress: LiveProgress | None,
) -> None:
    """A block pull per disk still backed (one already running is left running), watched
    until every disk reads from its image alone."""
    flags = libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES
    rate = int(bandwidth * 1024 * 1024) if bandwidth else 0
    pending = {d.target: d for d in state.disks}
    try:
        backed = domainxml.backed_targets(dom.XMLDesc(0))
    except libvirt.libvirtError as err:
        raise _domain_gone(dom, state, err) from None
    for target in list(pending):
        if target not in backed:
            del pending[target]
            continue
        try:
            info = dom.blockJobInfo(target, 0)
            if not info:
                dom.blockPull(target, rate, flags)
            elif bandwidth is not None:
                dom.blockJobSetSpeed(
                    target, rate, libvirt.VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES
                )
        except libvirt.libvirtError as err:
            raise LibvirtError(f"{target}: starting its block pull: {error_text(err)}") from None
    gone: dict[str, float] = {}  # job no longer listed, disk still backed: since when
    while pending:
        time.sleep(POLL)
        try:
            backed = domainxml.backed_targets(dom.XMLDesc(0))
            infos = {target: dom.blockJobInfo(target, 0) for target in pending}
        except libvirt.libvirtError as err:
            raise _domain_gone(dom, state, err) from None
        for target, disk in list(pending.items()):
            info = infos[target]
            if info:
                if progress is not None:
                    progress(target, int(info["cur"]), int(info["end"]))
                continue
            if target in backed:
                # a job QEMU has finished is gone a moment before libvirt drops the backing
                # from the disk's XML (it does so when it handles the job's event)
                since = gone.setdefault(target, time.monotonic())
                if time.monotonic() - since < JOB_GRACE:
                    continue
                raise _pull_failed(state, disk)
            if progress is not None:
                progress(target, 1, 1)
            del pending[target]


def _domain_gone(dom: libvirt.virDomain, state: LiveState, err: libvirt.libvirtError) -> VbError:
    """The domain stopped while its disks were copied (shut down, destroyed, QEMU died)."""
    if dom.isActive():
        return LibvirtError(f"{state.name}: watching its block pulls: {error_text(err)}")
    return LibvirtError(
        f"{state.name} stopped while its disks were copied (see "
        f"/var/log/libvirt/qemu/{state.name}.log); its images keep what was copied and what "
        f"the guest wrote: vbbackup restore --live --resume {state.name}"
    )


def _pull_failed(state: LiveState, disk: LiveDisk) -> VbError:
    resume = f"vbbackup restore --live --resume {state.name}"
    if disk.pid is None or not proc.running(disk.pid, disk.marker):
        log = Path(state.workdir) / f"nbdkit-{disk.target}.log"
        return MountError(
            f"{disk.target}: the server of its backup died ({log}); the guest pauses at its "
            f"first read of data not copied yet; finish with {resume}"
        )
    return LibvirtError(
        f"{disk.target}: the block pull stopped before it was complete; the guest keeps "
        f"running on its image over the backup; finish with {resume}"
    )


def _finish(dom: libvirt.virDomain, state: LiveState) -> None:
    """Every disk reads from its image alone: flush, check, stop the servers, forget."""
    _flush(dom)
    for disk in state.disks:
        image = Path(disk.image)
        if _has_backing(image):
            raise VbError(f"{image} still has a backing file after its pull; not finishing")
        with open(image, "rb") as f:
            os.fsync(f.fileno())
    sources = domainxml.disk_sources(_persistent_xml(dom))
    for disk in state.disks:
        if sources.get(disk.target) != disk.image:
            raise VbError(
                f"{state.name}: disk {disk.target} is defined on {sources.get(disk.target)!r}, "
                f"not on {disk.image}; not finishing"
            )
    _stop_servers(state)
    shutil.rmtree(state.workdir, ignore_errors=True)
    state.remove()


def _flush(dom: libvirt.virDomain) -> None:
    """A running VM is paused for a moment: QEMU flushes every image when it stops the VM,
    so what the pulls wrote (data and qcow2 metadata) is on disk before we say done."""
    if not dom.isActive():
        return
    if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
        _call(dom.suspend, f"pausing {dom.name()} to flush its images")
        _call(dom.resume, f"resuming {dom.name()}")


def _stop_servers(state: LiveState) -> None:
    for disk in state.disks:
        if disk.pid is not None and disk.marker is not None:
            stop_server(disk.pid, disk.marker, Path(disk.socket))
            disk.pid = None
