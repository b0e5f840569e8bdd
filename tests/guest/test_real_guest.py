"""A real Debian guest: frozen backups while it writes, booting restores next to the running
original, and ``verify --boot`` (tests.harness.guest; one guest for the whole session).

Points of the module's set (``guest_set``):
    point 0 (full): /data/unsynced.txt and /root/unsynced.txt written WITHOUT sync just
                    before the backup, a writer appending and fsyncing /data/writer.log
    point 1 (inc):  /data/changed.txt added, /data/unsynced.txt deleted
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from click.testing import CliRunner

from tests.harness.backup import chain_names
from tests.harness.guest import Guest, run_in, wait_booted
from vbbackup.cli import main
from vbbackup.virt.agent import agent_command
from vbmount.cli import main as vbmount_main

# the first test builds the image (about 2 min on a new machine) and boots the guest
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WRITER = (
    "setsid sh -c 'i=0; while [ $i -lt 200000 ]; do echo line$i >> /data/writer.log; "
    "sync /data/writer.log; i=$((i+1)); done' </dev/null >/dev/null 2>&1 &"
)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner(mix_stderr=False).invoke(main, list(args), prog_name="vbbackup")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def vbmount(*args: str) -> tuple[int, str, str]:
    result = CliRunner(mix_stderr=False).invoke(vbmount_main, list(args), prog_name="vbmount")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def debugfs_cat(image: Path, path: str) -> str | None:
    """A file of an ext4 image read by debugfs (no mount); None when it does not exist."""
    done = subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, text=True, check=False
    )
    if "File not found" in done.stderr:
        return None
    return done.stdout


def freeze_status(guest: Guest) -> str:
    return str(agent_command(guest.domain, "guest-fsfreeze-status"))


@dataclass(frozen=True)
class GuestSet:
    directory: Path
    points: list[str]


@pytest.fixture(scope="module")
def guest_set(real_guest: Guest, tmp_path_factory: pytest.TempPathFactory) -> GuestSet:
    guest = real_guest
    out = tmp_path_factory.mktemp("guest") / "set"
    guest.sh("rm -f /data/writer.log /data/changed.txt; " + WRITER + " sleep 2")
    guest.sh("echo 'in the page cache only' > /data/unsynced.txt; echo root > /root/unsynced.txt")
    code, _, err = run("full", guest.name, "-o", str(out), "--no-progress", "--compress")
    assert code == 0, err
    guest.sh("echo v2 > /data/changed.txt; rm /data/unsynced.txt; sync")
    code, _, err = run("inc", guest.name, "-o", str(out), "--no-progress")
    assert code == 0, err
    return GuestSet(out, chain_names(out))


def test_a_backup_while_the_guest_writes_is_frozen_and_thawed(
    real_guest: Guest, guest_set: GuestSet, tmp_path: Path
) -> None:
    (record,) = guest_set.directory.glob(f"consistency.{guest_set.points[0]}.json")
    consistency = json.loads(record.read_text())
    assert consistency["frozen"] is True and consistency["thawed"] is True
    assert {"/", "/data"} <= set(consistency["mountpoints"])
    assert freeze_status(real_guest) == "thawed"
    before = int(real_guest.sh("wc -l < /data/writer.log"))
    assert int(real_guest.sh("sleep 1; wc -l < /data/writer.log")) > before  # still writing
    # the guest's OS as its agent said it, beside the backup and in info
    state = json.loads((guest_set.directory / f"domain.{guest_set.points[0]}.json").read_text())
    assert state["guest_os"]["id"] == "debian" and state["guest_os"]["version-id"] == "12"
    kernel = real_guest.sh("uname -r").strip()
    code, text, err = run("info", str(guest_set.directory))
    assert code == 0, err
    assert f"guest: Debian GNU/Linux 12 (bookworm), kernel {kernel}; autostart off" in text

    data = tmp_path / "vdb.raw"
    code, _, err = vbmount("copy", str(guest_set.directory), str(data), "--disk", "vdb",
                           "--until", guest_set.points[0], "-O", "raw")  # fmt: skip
    assert code == 0, err
    assert debugfs_cat(data, "/unsynced.txt") == "in the page cache only\n"  # flushed by freeze
    lines = (debugfs_cat(data, "/writer.log") or "").splitlines()
    assert lines and lines == [f"line{i}" for i in range(len(lines))]  # whole lines, in order
    assert debugfs_cat(data, "/changed.txt") is None


def test_the_guest_is_thawed_when_the_backup_fails(
    real_guest: Guest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}

    def failing_begin(dom: libvirt.virDomain, *args: object) -> None:
        seen["status"] = freeze_status(real_guest)  # the job starts inside the freeze
        raise libvirt.libvirtError("injected: backup job refused")

    monkeypatch.setattr(libvirt.virDomain, "backupBegin", failing_begin)
    code, _, err = run("full", real_guest.name, "-o", str(tmp_path / "set"), "--no-progress")
    assert code != 0
    assert "injected: backup job refused" in err
    assert seen == {"status": "frozen"}
    assert freeze_status(real_guest) == "thawed"
    assert real_guest.sh("echo ok > /data/after-failure.txt && cat /data/after-failure.txt") == (
        "ok\n"
    )


@pytest.fixture
def defined(libvirt_conn: libvirt.virConnect) -> Iterator[list[str]]:
    """Names of domains a test defines; destroyed and undefined after it."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            dom = libvirt_conn.lookupByName(name)
        except libvirt.libvirtError:
            continue
        if dom.isActive():
            dom.destroy()
        dom.undefine()


def test_a_restored_point_boots_next_to_the_running_original(
    real_guest: Guest, guest_set: GuestSet, libvirt_conn: libvirt.virConnect, defined: list[str]
) -> None:
    name = f"{real_guest.name}-r0"
    out = real_guest.dir / "restored"  # QEMU (libvirt-qemu) must reach the images
    code, _, err = run("restore", str(guest_set.directory), "-o", str(out), "--no-progress",
                       "--until", guest_set.points[0], "--define", "--name", name)  # fmt: skip
    assert code == 0, err
    defined.append(name)
    out.chmod(0o755)
    dom = libvirt_conn.lookupByName(name)
    dom.create()  # the original runs: no log file, socket or disk may be shared
    wait_booted(dom)
    assert run_in(dom, "cat /data/unsynced.txt /root/unsynced.txt") == (
        "in the page cache only\nroot\n"
    )
    assert run_in(dom, "test -e /data/changed.txt || echo absent") == "absent\n"
    assert real_guest.domain.isActive()


def test_vbmount_boot_runs_the_newest_point_next_to_the_original(
    real_guest: Guest, guest_set: GuestSet, libvirt_conn: libvirt.virConnect
) -> None:
    name = f"{real_guest.name}-b1"
    code, _, err = vbmount("boot", str(guest_set.directory), "--name", name)
    assert code == 0, err
    try:
        dom = libvirt_conn.lookupByName(name)
        wait_booted(dom)
        assert run_in(dom, "cat /data/changed.txt") == "v2\n"
        assert run_in(dom, "test -e /data/unsynced.txt || echo absent") == "absent\n"
    finally:
        assert vbmount("unboot", name)[0] == 0
    assert name not in [d.name() for d in libvirt_conn.listAllDomains()]


def test_verify_boot_passes_every_good_point(guest_set: GuestSet) -> None:
    code, text, err = run("verify", str(guest_set.directory), "--boot", "--all", "--json",
                          "--check", "test -f /etc/vbguest-release && cat /etc/hostname",
                          "--timeout", "240")  # fmt: skip
    assert code == 0, err
    report = json.loads(text)
    assert report["passed"] is True
    assert [p["point"] for p in report["points"]] == guest_set.points
    for point in report["points"]:
        assert point["passed"] and point["heartbeat"] == "guest agent"
        assert 0 < point["seconds"] < 240
        assert point["check"]["exitcode"] == 0 and point["check"]["stdout"] == "vbguest\n"
    assert not list(Path("/var/tmp").glob("vbmount-boot-vbverify-*"))  # all torn down


def test_verify_boot_fails_a_point_that_cannot_boot_with_the_console_tail(
    real_guest: Guest, tmp_path: Path, libvirt_conn: libvirt.virConnect
) -> None:
    out = tmp_path / "unbootable"
    real_guest.sh("dd if=/dev/vda of=/root/mbr bs=512 count=1 status=none && "
                  "dd if=/dev/zero of=/dev/vda bs=512 count=1 conv=fsync status=none")  # fmt: skip
    try:
        code, _, err = run("full", real_guest.name, "-o", str(out), "--no-progress")
        assert code == 0, err
    finally:
        real_guest.sh("dd if=/root/mbr of=/dev/vda bs=512 count=1 conv=fsync status=none")
    started = time.monotonic()
    code, text, err = run("verify", str(out), "--boot", "--json", "--timeout", "200")
    assert code == 9, err
    assert time.monotonic() - started < 100  # the console says so: no need to wait 200 s
    (point,) = json.loads(text)["points"]
    assert point["passed"] is False
    assert point["reason"] == "the guest cannot boot: No bootable device", point["reason"]
    tail = point["console_tail"]
    assert any("not a bootable disk" in line for line in tail), tail
    assert "did not boot" in err
    assert not [d for d in libvirt_conn.listAllDomains() if d.name().startswith("vbverify-")]


def test_file_restore_from_the_real_guest_at_each_point(
    guest_set: GuestSet, tmp_path: Path
) -> None:
    p0, p1 = guest_set.points
    code, text, err = vbmount("inspect", str(guest_set.directory), "--json")
    assert code == 0, err
    (found,) = json.loads(text)
    assert (found["distro"], found["hostname"]) == ("debian", "vbguest")
    assert found["version"].startswith("12.")  # bookworm and its point release
    assert found["mountpoints"] == {"/": "/dev/sda1", "/data": "/dev/sdb"}
    assert found["kernels"] and all(k.endswith("-amd64") for k in found["kernels"])
    code, _, err = vbmount("get", str(guest_set.directory), "--until", p1, "/data/changed.txt",
                           "/root/unsynced.txt", "-o", str(tmp_path / "p1"))  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "p1/changed.txt").read_text() == "v2\n"
    assert (tmp_path / "p1/unsynced.txt").read_text() == "root\n"
    code, text, err = vbmount("ls", str(guest_set.directory), "--until", p0, "/data")
    assert code == 0, err
    names = [line.split()[-1] for line in text.splitlines()]
    assert "unsynced.txt" in names and "changed.txt" not in names
