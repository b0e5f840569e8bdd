"""``verify --boot`` on no-OS VMs: the console heartbeat (SeaBIOS on the serial port), the
fast failure, bad input, and teardown on SIGTERM. The real guest's agent heartbeat and
``--check`` are in tests/guest/test_real_guest.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
from click.testing import CliRunner

from tests.harness.vm import DiskSpec, TestVM
from vbbackup.cli import main
from vbbackup.engine.lock import boot_lock

MiB = 1024 * 1024
VBBACKUP = [sys.executable, "-c", "from vbbackup.cli import main; main(prog_name='vbbackup')"]
# an MBR that SeaBIOS boots and that then loops forever: "jmp $", the boot signature
SPINNING_MBR = b"\xeb\xfe" + bytes(508) + b"\x55\xaa"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner(mix_stderr=False).invoke(main, list(args), prog_name="vbbackup")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def backed_up(vm: TestVM, out: Path, mbr: bytes | None = None) -> Path:
    if mbr is not None:
        vm.write("vda", 0, mbr)
    code, _, err = run("full", vm.name, "-o", str(out), "--no-progress")
    assert code == 0, err
    return out


def verify_domains(conn: libvirt.virConnect) -> list[str]:
    return [d.name() for d in conn.listAllDomains() if d.name().startswith("vbverify-")]


def test_boot_options_need_boot_and_say_so(tmp_path: Path) -> None:
    code, _, err = run("verify", str(tmp_path), "--all")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "vbbackup: error: --all and --json go with --boot or --fsck"
    )


@pytest.mark.integration
def test_the_console_heartbeat_passes_and_the_set_is_not_written(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm([DiskSpec("vda", 8 * MiB)])
    out = backed_up(vm, tmp_path / "set", SPINNING_MBR)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, text, err = run("verify", str(out), "--boot", "--expect-console", "Booting from Hard")
    assert code == 0, err
    assert text.startswith("ok   vbbackup.")
    assert "console /Booting from Hard/ after" in text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert verify_domains(vm.conn) == []


@pytest.mark.integration
def test_a_disk_without_boot_code_fails_at_once_with_the_console_tail(make_vm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm([DiskSpec("vda", 8 * MiB)])
    out = backed_up(vm, tmp_path / "set")  # all zeroes
    started = time.monotonic()
    code, text, err = run("verify", str(out), "--boot", "--expect-console", "login:",
                          "--timeout", "300", "--json")  # fmt: skip
    assert code == 9
    assert time.monotonic() - started < 120
    (point,) = json.loads(text)["points"]
    assert point["reason"] == "the guest cannot boot: No bootable device"
    assert any("not a bootable disk" in line for line in point["console_tail"])
    assert err.strip().splitlines()[-1].startswith("vbbackup: error: 1 of 1 point(s) of ")


@pytest.mark.integration
def test_no_agent_channel_and_no_console_regex_is_refused(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm([DiskSpec("vda", 8 * MiB)])
    out = backed_up(vm, tmp_path / "set")
    code, _, err = run("verify", str(out), "--boot")
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("vbbackup: error: the saved configuration vmconfig.")
    assert line.endswith("has no guest agent channel (org.qemu.guest_agent.0): give "
                         "--expect-console REGEX (a line the guest prints on its serial "
                         "console when it is up)")  # fmt: skip
    code, _, err = run("verify", str(out), "--boot", "--expect-console", "(")
    assert code == 2 and "--expect-console '(': missing ), unterminated subpattern" in err
    assert verify_domains(vm.conn) == []


@pytest.mark.integration
def test_sigterm_tears_the_boot_down(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm([DiskSpec("vda", 8 * MiB)])
    out = backed_up(vm, tmp_path / "set", SPINNING_MBR)
    proc = subprocess.Popen(
        [*VBBACKUP, "verify", str(out), "--boot", "--expect-console", "never", "--timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not verify_domains(vm.conn):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    (name,) = verify_domains(vm.conn)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "vbbackup: error: stopped by SIGTERM"
    assert verify_domains(vm.conn) == []
    assert not Path(f"/var/tmp/vbmount-boot-{name}").exists()
    ps = subprocess.run(["pgrep", "-f", f"vbmount-boot-{name}"], capture_output=True, check=False)
    assert ps.stdout == b""  # no nbdkit left


@pytest.mark.integration
def test_a_second_verify_boot_of_the_set_is_refused(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = make_vm([DiskSpec("vda", 8 * MiB)])
    out = backed_up(vm, tmp_path / "set", SPINNING_MBR)
    with boot_lock(out):  # as a running verify --boot holds it
        code, _, err = run("verify", str(out), "--boot", "--expect-console", "x")
    assert code != 0
    assert err.strip().splitlines()[-1] == (
        f"vbbackup: error: another verify --boot (pid {os.getpid()}) is booting {out}; wait for it"
    )
    assert verify_domains(vm.conn) == []
