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
    root = ET.fromstring(
        restore_xml(SAVED, "web01-restore", {"vda": overlay}, {"vda": sock}, Path("/var/tmp/b"))
    )
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


LIVE_DEVICES = """<domain type='qemu' id='7'>
  <name>web01</name>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/web01.qcow2'/><target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'><mac address='52:54:00:12:34:56'/><source network='default'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <log file='/var/log/web01-serial.log' append='off'/>
      <target type='isa-serial' port='0'/>
      <alias name='serial0'/>
    </serial>
    <serial type='file'><source path='/var/log/web01-ttyS1.out'/><target port='1'/></serial>
    <console type='pty' tty='/dev/pts/3'>
      <source path='/dev/pts/3'/>
      <log file='/var/log/web01-serial.log' append='off'/>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-7-web01/agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
    </channel>
    <channel type='unix'>
      <source mode='connect' path='/run/shared-service.sock'/>
      <target type='virtio' name='org.example.shared'/>
    </channel>
  </devices>
</domain>"""


def test_the_copy_shares_no_host_file_or_socket_with_a_running_original() -> None:
    work = Path("/var/tmp/vbmount-boot-copy")
    xml = restore_xml(LIVE_DEVICES, "copy", {"vda": work / "vda.qcow2"}, {"vda": work / "s"}, work)
    root = ET.fromstring(xml)
    assert root.get("id") is None
    serial0, serial1 = root.findall("devices/serial")
    assert serial0.find("source") is None  # QEMU opens a new pty
    assert serial0.find("log").get("file") == str(work / "copy-serial0.log")
    assert serial1.find("source").get("path") == str(work / "copy-serial1.out")
    console = root.find("devices/console")
    assert console.find("source") is None and console.find("log") is None
    agent, shared = root.findall("devices/channel")
    assert agent.find("source") is None  # libvirt makes the copy's own socket
    assert "state" not in agent.find("target").attrib
    assert shared.find("source").get("path") == "/run/shared-service.sock"  # a client: kept
    paths = [e.get("path") or e.get("file") for e in root.iter() if e.tag in ("source", "log")]
    assert not [p for p in paths if p and (p.startswith("/var/log") or "domain-7" in p)]
    assert root.find("devices/interface") is not None  # vbmount boot keeps the network


def test_an_isolated_copy_has_no_network_and_logs_its_console_in_the_workdir() -> None:
    work = Path("/var/tmp/vbmount-boot-check")
    console = work / "console.log"
    xml = restore_xml(
        LIVE_DEVICES, "check", {"vda": work / "vda.qcow2"}, {"vda": work / "s"}, work, console
    )
    root = ET.fromstring(xml)
    assert root.find("devices/interface") is None
    assert root.find("os/bios").get("useserial") == "yes"
    assert [log.get("file") for log in root.findall("devices/serial")[0].findall("log")] == [
        str(console)
    ]
    bare = SAVED.replace("<interface type='network'>", "<!-- -->").replace(
        "<mac address='52:54:00:12:34:56'/>\n      <source network='default'/>\n    </interface>",
        "",
    )
    root = ET.fromstring(
        restore_xml(bare, "check", {"vda": work / "vda.qcow2"}, {"vda": work / "s"}, work, console)
    )
    (serial,) = root.findall("devices/serial")  # one added: the console is read from it
    assert serial.find("log").get("file") == str(console)
    assert root.find("os/bios") is None  # a UEFI guest: its firmware, not SeaBIOS
