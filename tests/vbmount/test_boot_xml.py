"""The restored domain's XML: new identity, disks on overlays, nothing of the original's."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from vbmount.boot import restore_xml

SAVED = """<domain type='kvm'>
  <name>web01</name>
  <uuid>0b7c1a64-1111-2222-3333-444455556666</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type>
      <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
      <nvram>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-vda'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg/web01-data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/iso/install.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
    </interface>
  </devices>
</domain>"""


def test_restore_xml() -> None:
    overlay, sock = Path("/var/tmp/b/vda.qcow2"), Path("/var/tmp/b/vda.sock")
    root = ET.fromstring(restore_xml(SAVED, "web01-restore", {"vda": overlay}, {"vda": sock}))
    assert root.get("type") == "kvm"
    assert root.findtext("name") == "web01-restore"
    assert root.find("uuid") is None
    assert root.find("os/nvram") is None
    assert root.find("os/loader") is not None
    assert root.find("devices/interface/mac") is None
    assert root.find("devices/interface/source").get("network") == "default"
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "sda"]  # vdb: not backed up
    vda = disks[0]
    assert vda.get("type") == "file"
    assert vda.find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none"}
    assert [s.attrib for s in vda.findall("source")] == [{"file": str(overlay)}]
    (backing,) = vda.findall("backingStore")
    assert backing.get("type") == "network"
    assert backing.find("format").get("type") == "raw"
    assert backing.find("source").get("protocol") == "nbd"
    assert backing.find("source/host").attrib == {"transport": "unix", "socket": str(sock)}
    assert disks[1].find("source").get("file") == "/iso/install.iso"
