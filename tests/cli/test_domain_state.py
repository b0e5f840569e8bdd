"""What a backup keeps of the domain beside its XML (``domain.<id>.json``): autostart,
re-applied by ``restore --define``; a vTPM's state (``tpm.<id>.tar``), put back by it."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import libvirt
import pytest
from click.testing import CliRunner
from lxml import etree

from tests.harness.backup import chain_names
from tests.harness.fixtures import require
from tests.harness.vm import DiskSpec
from vbbackup.cli import main
from vbbackup.virt.domainxml import emulated_tpms

MiB = 1024 * 1024


def run(*args: str | Path) -> Any:
    return CliRunner(mix_stderr=False).invoke(main, [str(a) for a in args], prog_name="vbbackup")


def test_emulated_tpms_are_found_by_their_backend() -> None:
    xml = """<domain><devices>
      <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
      <tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>
    </devices></domain>"""
    assert emulated_tpms(xml) == ["tpm-crb"]
    assert emulated_tpms("<domain><devices/></domain>") == []


@pytest.mark.integration
def test_autostart_is_saved_and_restore_define_sets_it(
    make_vm: Any, tmp_path: Path, libvirt_conn: Any
) -> None:
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    vm.dom.setAutostart(1)
    out = tmp_path / "set"
    assert run("full", vm.name, "-o", out, "--no-progress").exit_code == 0
    (point,) = chain_names(out)
    state = json.loads((out / f"domain.{point}.json").read_text())
    assert state == {"autostart": True, "guest_os": None, "vtpm": []}
    info = run("info", out)
    assert "guest: unknown (no guest agent); autostart on" in info.stdout
    name = f"{vm.name}-r"
    try:
        result = run("restore", out, "-o", tmp_path / "r", "--define", "--name", name,
                     "--no-progress")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert f"autostart: on, as the domain had it at backup time ({name})" in result.stdout
        assert libvirt_conn.lookupByName(name).autostart() == 1
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            libvirt_conn.lookupByName(name).undefine()
    vm.dom.setAutostart(0)
    out2 = tmp_path / "set2"
    assert run("full", vm.name, "-o", out2, "--no-progress").exit_code == 0
    name2 = f"{vm.name}-s"
    try:
        result = run("restore", out2, "-o", tmp_path / "r2", "--define", "--name", name2)
        assert result.exit_code == 0 and "autostart: on" not in result.stdout
        assert libvirt_conn.lookupByName(name2).autostart() == 0
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            libvirt_conn.lookupByName(name2).undefine()


@pytest.mark.integration
def test_the_vtpm_state_is_saved_and_put_back_before_the_restored_domain_starts(
    make_vm: Any, tmp_path: Path, libvirt_conn: Any
) -> None:
    require("swtpm")
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    root = etree.fromstring(vm.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    tpm = etree.SubElement(root.find("devices"), "tpm", model="tpm-tis")
    etree.SubElement(tpm, "backend", type="emulator", version="2.0")
    vm.dom.destroy()
    libvirt_conn.defineXML(etree.tostring(root, encoding="unicode"))
    vm.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)  # libvirt manufactures the TPM
    permall = Path("/var/lib/libvirt/swtpm", vm.dom.UUIDString(), "tpm2", "tpm2-00.permall")
    original = permall.read_bytes()
    out = tmp_path / "set"
    result = run("full", vm.name, "-o", out, "--no-progress", "--strict")
    assert result.exit_code == 0, result.stderr  # no warning: the state is in the set
    (point,) = chain_names(out)
    state = json.loads((out / f"domain.{point}.json").read_text())
    assert (state["vtpm"], state["vtpm_state"]) == (["tpm-tis"], f"tpm.{point}.tar")
    assert f"vTPM state saved (tpm.{point}.tar)" in run("info", out).stdout
    name = f"{vm.name}-t"
    names = [name]
    try:
        # into the VM's directory: the restored domain starts, and QEMU must open its image
        result = run("restore", out, "-o", vm.dir / "r", "--define", "--name", name,
                     "--no-progress")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        restored = libvirt_conn.lookupByName(name)
        home = Path("/var/lib/libvirt/swtpm", restored.UUIDString())
        assert f"vTPM state: put back into {home}" in result.stdout.splitlines()
        assert (home / "tpm2" / "tpm2-00.permall").read_bytes() == original
        restored.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        # libvirt took the state as it was: no new TPM manufactured for the restored domain
        log = Path(f"/var/log/swtpm/libvirt/qemu/{name}-swtpm.log")
        assert not log.exists() or "manufacturing" not in log.read_text()
        assert (home / "tpm2" / "tpm2-00.permall").read_bytes() == original
        # restore --live: the state is in place before the domain starts, too
        live = f"{vm.name}-l"
        names.append(live)
        result = run("restore", out, "-o", vm.dir / "live", "--live", "--name", live,
                     "--no-progress")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        home = Path("/var/lib/libvirt/swtpm", libvirt_conn.lookupByName(live).UUIDString())
        assert (home / "tpm2" / "tpm2-00.permall").read_bytes() == original
    finally:
        for gone in names:
            with contextlib.suppress(libvirt.libvirtError):
                libvirt_conn.lookupByName(gone).destroy()
            with contextlib.suppress(libvirt.libvirtError):
                libvirt_conn.lookupByName(gone).undefine()
