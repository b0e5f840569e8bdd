"""Kernel, initrd, UEFI loader and NVRAM are saved with the backup, named as virtnbdbackup does."""

from __future__ import annotations

import os
from pathlib import Path

import libvirt
import pytest

from tests.harness.libvirtd import capabilities, ensure_libvirtd
from vbbackup.errors import VbError
from vbbackup.virt.bootfiles import BootFile, boot_files, save_boot_files, saved_boot_files


def _xml(name: str, files: dict[str, Path]) -> str:
    loader = (
        f"<loader readonly='yes' type='pflash'>{files['loader']}</loader>"
        if "loader" in files
        else ""
    )
    nvram = f"<nvram>{files['nvram']}</nvram>" if "nvram" in files else ""
    kernel = f"<kernel>{files['kernel']}</kernel>" if "kernel" in files else ""
    initrd = f"<initrd>{files['initrd']}</initrd>" if "initrd" in files else ""
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
      <os><type arch='x86_64' machine='q35'>hvm</type>{loader}{nvram}{kernel}{initrd}</os>
      <features><acpi/></features><devices><memballoon model='none'/></devices></domain>"""


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for kind in ("kernel", "initrd", "loader", "nvram"):
        path = tmp_path / "boot" / f"{kind}-file.bin"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(kind.encode() * 1000)
        files[kind] = path
    return files


def test_boot_files_are_read_from_the_os_element(tmp_path: Path) -> None:
    files = _files(tmp_path)
    assert boot_files(_xml("vm", files)) == [BootFile(k, files[k]) for k in files]
    assert boot_files(_xml("vm", {})) == []


def test_saved_with_the_checkpoint_name_or_plain_for_a_copy(tmp_path: Path) -> None:
    files = _files(tmp_path)
    out = tmp_path / "set"
    out.mkdir()
    saved = save_boot_files(_xml("vm", files), out, "virtnbdbackup.0")
    assert [p.name for p in saved] == [f"{k}-file.bin.virtnbdbackup.0" for k in files]
    for path, kind in zip(saved, files, strict=True):
        assert path.read_bytes() == files[kind].read_bytes()
    (copy,) = save_boot_files(_xml("vm", {"nvram": files["nvram"]}), out, None)
    assert copy.name == "nvram-file.bin"


def test_missing_boot_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VbError, match=r"cannot save the kernel file /nonexistent/vmlinuz: "):
        save_boot_files(_xml("vm", {"kernel": Path("/nonexistent/vmlinuz")}), tmp_path, "x")


@pytest.mark.integration
def test_from_a_uefi_domain_defined_in_libvirt(tmp_path: Path) -> None:
    """libvirt fills in the NVRAM path for a UEFI domain; the files are those libvirt names."""
    if capabilities().missing("libvirtd", "qemu") or not Path("/usr/share/OVMF").is_dir():
        pytest.skip("needs libvirtd, qemu and ovmf")
    ensure_libvirtd()
    code = next(Path("/usr/share/OVMF").glob("OVMF_CODE*.fd"))
    nvram = tmp_path / "vars.fd"
    nvram.write_bytes(b"\0" * 4096)
    name = f"vbtest-{os.getpid()}-bootfiles"
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.defineXML(_xml(name, {"loader": code, "nvram": nvram}))
        try:
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        finally:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
    finally:
        conn.close()
    out = tmp_path / "set"
    out.mkdir()
    saved = save_boot_files(xml, out, "virtnbdbackup.0")
    assert [p.name for p in saved] == [f"{code.name}.virtnbdbackup.0", "vars.fd.virtnbdbackup.0"]
    assert saved[0].read_bytes() == code.read_bytes()


def test_saved_boot_files_are_found_from_the_sets_domain_xml(tmp_path: Path) -> None:
    files = _files(tmp_path)
    out = tmp_path / "set"
    out.mkdir()
    xml = _xml("vm", {"kernel": files["kernel"], "nvram": files["nvram"]})
    (out / "vmconfig.virtnbdbackup.0.xml").write_text(xml)
    save_boot_files(xml, out, "virtnbdbackup.0")
    (out / "vda.full.data").write_bytes(b"")  # not a boot file
    assert saved_boot_files(out) == [
        ("kernel", out / "kernel-file.bin.virtnbdbackup.0"),
        ("nvram", out / "nvram-file.bin.virtnbdbackup.0"),
    ]
