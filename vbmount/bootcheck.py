"""``vbbackup verify --boot``: each chosen point booted, isolated, until the guest answers.

Checksums prove that a set holds what was read, not that the VM comes back. Each
point is booted through `vbmount.boot` (overlays over served exports; the set is
never written) with a throwaway name, no network interface, the serial console
logged in the boot's directory, and SeaBIOS writing to that console. A point
passes when its heartbeat comes within the timeout (the guest agent answers, or
the console prints a regex) and the optional ``--check`` command exits 0 in the
guest; it fails at the timeout, or at once when the console shows that the guest
cannot come up (no bootable device, a kernel panic). Whatever happens (a
failure, the timeout, Ctrl-C, SIGTERM), the domain, its servers and overlays are
removed before the next point boots; one verify per set runs at a time.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vbbackup.chain import BackupSet
from vbbackup.engine.fsck import chosen_points
from vbbackup.engine.lock import boot_lock
from vbbackup.errors import LibvirtError, UsageError
from vbbackup.virt import domainxml, libvirt_connection
from vbbackup.virt.agent import agent_answers, guest_exec
from vbbackup.virt.job import signals_raise
from vbmount import boot

AGENT_CHANNEL = "org.qemu.guest_agent.0"
TAIL_LINES = 25
# console lines after which the guest will not come up: fail at once, not at the timeout
FATAL = re.compile(r"No bootable device|Kernel panic - not syncing|"
                   r"Failed to load ldlinux|Boot error")  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


@dataclass(frozen=True)
class BootCheckConfig:
    directory: Path
    until: str | None = None
    all_points: bool = False
    timeout: float = 300.0
    expect_agent: bool = False
    expect_console: str | None = None
    check: str | None = None
    uri: str = "qemu:///system"


@dataclass
class PointResult:
    """One booted point: what verify --boot reports (``--json``: these keys)."""

    point: str
    passed: bool
    heartbeat: str  # "guest agent" or "console /REGEX/"
    seconds: float | None = None  # from the start to the heartbeat
    reason: str = ""
    check: dict[str, Any] | None = None
    console_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def heartbeat_of(config: BootCheckConfig, saved_xml: Path) -> str:
    """What proves a boot: the console regex, else the agent (which the guest must have)."""
    if config.expect_console is not None:
        try:
            re.compile(config.expect_console)
        except re.error as err:
            raise UsageError(f"--expect-console {config.expect_console!r}: {err}") from None
        if config.expect_agent:
            raise UsageError("give --expect-agent or --expect-console REGEX, not both")
        return f"console /{config.expect_console}/"
    root = domainxml.parse(saved_xml).getroot()
    names = [t.get("name") for t in root.iterfind("devices/channel/target")]
    if AGENT_CHANNEL not in names:
        raise UsageError(
            f"the saved configuration {saved_xml.name} has no guest agent channel "
            f"({AGENT_CHANNEL}): give --expect-console REGEX (a line the guest prints "
            "on its serial console when it is up)"
        )
    return "guest agent"


def boot_check(config: BootCheckConfig, say: Callable[[str], None]) -> list[PointResult]:
    """Boot each chosen point in turn; a result per point (exceptions only for bad input)."""
    backup = BackupSet(config.directory)
    points = chosen_points(backup, config.until, config.all_points)
    heartbeat = heartbeat_of(config, boot.vmconfig_path(backup, points[-1]))
    if config.check is not None and not heartbeat.startswith("guest agent"):
        raise UsageError("--check runs through the guest agent: not with --expect-console")
    results = []
    with boot_lock(config.directory), signals_raise():
        for point in points:
            say(f"booting {point} (timeout {config.timeout:.0f} s, heartbeat: {heartbeat})")
            result = _check_point(config, point, heartbeat)
            mark = "passed" if result.passed else f"FAILED: {result.reason}"
            say(f"{point}: {mark}")
            results.append(result)
    return results


def _check_point(config: BootCheckConfig, point: str, heartbeat: str) -> PointResult:
    original = boot.vmconfig_path(BackupSet(config.directory), point)
    stem = domainxml.domain_name(domainxml.parse(original))
    name = f"vbverify-{stem}-{secrets.token_hex(3)}"
    booted = boot.boot(
        boot.BootConfig(config.directory, until=point, name=name, uri=config.uri, isolated=True)
    )
    result = PointResult(point, False, heartbeat)
    try:
        with libvirt_connection(config.uri) as conn:
            dom = conn.lookupByName(name)
            started = time.monotonic()
            reason = _await_heartbeat(dom, config, booted.console, started)
            if reason:
                result.reason = reason
            else:
                result.seconds = round(time.monotonic() - started, 1)
                result.passed = True
                if config.check is not None:
                    result.check = _run_check(dom, config.check, config.timeout)
                    if result.check["exitcode"] != 0:
                        result.passed = False
                        result.reason = (
                            f"--check {config.check!r} exited {result.check['exitcode']}"
                        )
        if not result.passed:
            result.console_tail = console_tail(booted.console)
    finally:
        boot.unboot(name, config.uri)
    return result


def _await_heartbeat(
    dom: Any, config: BootCheckConfig, console: Path | None, started: float
) -> str:
    """'' once the heartbeat came; else why not (timeout, the guest stopped)."""
    pattern = re.compile(config.expect_console) if config.expect_console is not None else None
    while True:
        if not dom.isActive():
            return "the domain stopped while booting"
        text = _console_text(console)
        if pattern is not None:
            if pattern.search(text):
                return ""
        elif agent_answers(dom):
            return ""
        fatal = FATAL.search(text)
        if fatal:
            return f"the guest cannot boot: {fatal.group(0).strip()}"
        if time.monotonic() - started > config.timeout:
            what = "the guest agent did not answer" if pattern is None else "no console match"
            return f"no heartbeat within {config.timeout:.0f} s ({what})"
        time.sleep(1.0)


def _run_check(dom: Any, command: str, timeout: float) -> dict[str, Any]:
    try:
        done = guest_exec(dom, ["/bin/sh", "-c", command], timeout=timeout)
    except LibvirtError as err:
        return {"command": command, "exitcode": None, "stdout": "", "stderr": str(err)}
    return {
        "command": command,
        "exitcode": done.exitcode,
        "stdout": done.stdout.decode(errors="replace")[-4000:],
        "stderr": done.stderr.decode(errors="replace")[-4000:],
    }


def _console_text(console: Path | None) -> str:
    if console is None:
        return ""
    try:
        return _ANSI.sub("", console.read_text(errors="replace"))
    except FileNotFoundError:
        return ""


def console_tail(console: Path | None, lines: int = TAIL_LINES) -> list[str]:
    """The last lines the serial console printed, control sequences removed."""
    text = [line.rstrip() for line in _console_text(console).splitlines()]
    return [line for line in text if line.strip()][-lines:]
