"""virtnbdbackup's habits: --strict (exit 2 when the run had warnings), --syslog, and the
default libvirt URI (system as root, session otherwise)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.harness.vm import DiskSpec
from vbbackup.cli import main
from vbbackup.virt.connection import default_uri

MiB = 1024 * 1024
SKIPPED = "warning: vdb: skipped: raw image cannot carry checkpoints (--raw copies it whole)"


def run(*args: str | Path) -> Any:
    return CliRunner(mix_stderr=False).invoke(main, [str(a) for a in args], prog_name="vbbackup")


def test_default_uri_is_the_session_daemon_for_other_users(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_uri() == ("qemu:///system" if os.geteuid() == 0 else "qemu:///session")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert default_uri() == "qemu:///session"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_uri() == "qemu:///system"
    text = " ".join(run("full", "--help").stdout.split())
    assert "[default: (qemu:///system as root, else qemu:///session)]" in text


@pytest.mark.integration
def test_strict_exits_2_after_a_complete_backup_with_warnings(make_vm: Any, tmp_path: Path) -> None:
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB), DiskSpec("vdb", 8 * MiB, fmt="raw")])
    vm.write_pattern("vda", 0, MiB, 0x61)
    plain = run("full", vm.name, "-o", tmp_path / "plain", "--no-progress", "--json")
    assert plain.exit_code == 0, plain.stderr
    assert SKIPPED in plain.stderr
    assert json.loads(plain.stdout)["warnings"] == [SKIPPED.removeprefix("warning: ")]
    strict = run("full", vm.name, "-o", tmp_path / "strict", "--no-progress", "--strict")
    assert strict.exit_code == 2
    lines = strict.stderr.strip().splitlines()
    assert SKIPPED in lines
    assert lines[-1] == "vbbackup: finished with 1 warning (--strict: exit 2)"
    assert (tmp_path / "strict" / "vda.full.data").is_file()
    assert run("verify", tmp_path / "strict").exit_code == 0  # a complete, sound backup
    quiet = run("full", vm.name, "-o", tmp_path / "all", "--no-progress", "--strict", "--raw")
    assert quiet.exit_code == 0, quiet.stderr  # nothing left out: no warning


@pytest.mark.integration
def test_syslog_gets_the_run_log(
    make_vm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    address = tmp_path / "log"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(address))
        server.settimeout(5)
        monkeypatch.setenv("VBBACKUP_SYSLOG_SOCKET", str(address))
        result = run("full", vm.name, "-o", tmp_path / "set", "--no-progress", "--syslog")
        assert result.exit_code == 0, result.stderr
        messages = []
        server.setblocking(False)
        while True:
            try:
                messages.append(server.recv(65536).decode())
            except BlockingIOError:
                break
    assert any(f"vbbackup full of {vm.name} into" in m for m in messages), messages
    # the handler goes with the run: later commands in this process do not write into a
    # closed socket ("--- Logging error ---" on stderr)
    handlers = logging.getLogger("vbbackup").handlers
    assert not [h for h in handlers if isinstance(h, logging.handlers.SysLogHandler)]
    assert all(m.startswith("<") and "vbbackup[" in m for m in messages)
    monkeypatch.setenv("VBBACKUP_SYSLOG_SOCKET", str(tmp_path / "none"))
    missing = run("full", vm.name, "-o", tmp_path / "set2", "--no-progress", "--syslog")
    assert missing.exit_code == 2
    assert missing.stderr.strip().startswith(
        f"vbbackup: error: --syslog: cannot reach syslog at {tmp_path / 'none'}: "
    )
    assert not (tmp_path / "set2").exists()
