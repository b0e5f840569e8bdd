"""``--pause``: a running domain is suspended while the backup job starts and resumed right
after, also when the job fails; libvirt's lifecycle events show it."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner

from tests.harness.libvirtd import URI
from tests.harness.vm import DiskSpec
from vbbackup.cli import main

MiB = 1024 * 1024
pytestmark = pytest.mark.integration
_loop: list[threading.Thread] = []


def _events(name: str) -> tuple[libvirt.virConnect, list[int]]:
    """A connection whose lifecycle events of domain ``name`` land in the returned list."""
    if not _loop:
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _loop.append(threading.Thread(target=run, daemon=True))
        _loop[0].start()
    conn = libvirt.open(URI)
    seen: list[int] = []

    def on_event(_c: Any, dom: libvirt.virDomain, event: int, _detail: int, _o: Any) -> None:
        if dom.name() == name:
            seen.append(event)

    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None)
    return conn, seen


def _wait_for(seen: list[int], count: int) -> None:
    deadline = time.monotonic() + 10
    while len(seen) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def run(*args: str | Path) -> Any:
    return CliRunner(mix_stderr=False).invoke(main, [str(a) for a in args], prog_name="vbbackup")


def test_pause_suspends_while_the_job_starts_and_resumes(make_vm: Any, tmp_path: Path) -> None:
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    vm.write_pattern("vda", MiB, MiB, 0x42)
    vm.dom.resume()  # a running guest (its BIOS finds nothing to boot, it waits)
    conn, seen = _events(vm.name)
    try:
        result = run("full", vm.name, "-o", tmp_path / "set", "--pause", "--no-freeze",
                     "--no-progress", "--json")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        _wait_for(seen, 2)
        assert seen == [libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_RESUMED]
        assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert json.loads(result.stdout)["consistency"]["paused"] is True
        assert f"{vm.name} paused while the backup job starts (--pause)" in result.stderr
        seen.clear()
        plain = run("full", vm.name, "-o", tmp_path / "plain", "--no-freeze", "--no-progress")
        assert plain.exit_code == 0, plain.stderr
        time.sleep(0.5)
        assert seen == []  # without --pause the guest runs on
    finally:
        conn.close()


def test_pause_resumes_when_the_job_fails(
    make_vm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    vm.dom.resume()

    def failing_begin(dom: libvirt.virDomain, *args: object) -> None:
        raise libvirt.libvirtError("injected: backupBegin failed")

    monkeypatch.setattr(libvirt.virDomain, "backupBegin", failing_begin)
    result = run("full", vm.name, "-o", tmp_path / "set", "--pause", "--no-freeze",
                 "--no-progress")  # fmt: skip
    assert result.exit_code != 0
    assert vm.dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
