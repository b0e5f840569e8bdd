"""What a backup keeps of the domain beside its XML (``domain.<id>.json``): autostart,
re-applied by ``restore --define``; a warning for a vTPM whose state is not saved."""

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
def test_a_vtpm_gets_a_warning_and_strict_exits_2(
    make_vm: Any, tmp_path: Path, libvirt_conn: Any
) -> None:
    require("swtpm")
    vm = make_vm(disks=[DiskSpec("vda", 16 * MiB)])
    root = etree.fromstring(vm.dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    tpm = etree.SubElement(root.find("devices"), "tpm", model="tpm-tis")
    etree.SubElement(tpm, "backend", type="emulator", version="2.0")
    vm.dom.destroy()
    libvirt_conn.defineXML(etree.tostring(root, encoding="unicode"))
    vm.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    result = run("full", vm.name, "-o", tmp_path / "set", "--no-progress", "--strict")
    assert result.exit_code == 2
    assert (
        f"warning: {vm.name} has a vTPM (tpm-tis, swtpm): its state is not in the backup; a "
        "guest that keeps keys in it (BitLocker, LUKS bound to the TPM) may not boot from a "
        "restore without it"
    ) in result.stderr.splitlines()
    (point,) = chain_names(tmp_path / "set")
    state = json.loads((tmp_path / "set" / f"domain.{point}.json").read_text())
    assert state["vtpm"] == ["tpm-tis"]
    assert "vTPM state not saved" in run("info", tmp_path / "set").stdout
