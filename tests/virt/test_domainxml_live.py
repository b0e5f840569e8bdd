"""domainxml helpers of the live restore: error policies for the running definition, and
which disks still read from a backing image."""

from __future__ import annotations

from lxml import etree

from vbbackup.virt.domainxml import backed_targets, disk_sources, stop_on_io_errors

LIVE = """<domain type='qemu'><name>web01</name><devices>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/out/vda.qcow2'/>
    <backingStore type='network' index='1'>
      <format type='raw'/>
      <source protocol='nbd'><host transport='unix' socket='/var/tmp/x/vda.sock'/></source>
      <backingStore/>
    </backingStore>
    <target dev='vda' bus='virtio'/>
  </disk>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/out/vdb.qcow2'/>
    <backingStore/>
    <target dev='vdb' bus='virtio'/>
  </disk>
  <disk type='block' device='disk'>
    <source dev='/dev/vg0/data'/>
    <target dev='vdc' bus='virtio'/>
  </disk>
</devices></domain>"""


def test_backed_targets_are_the_disks_with_a_backing_source() -> None:
    assert backed_targets(LIVE) == {"vda"}


def test_disk_sources_name_files_and_devices() -> None:
    assert disk_sources(LIVE) == {"vda": "/out/vda.qcow2", "vdb": "/out/vdb.qcow2",
                                  "vdc": "/dev/vg0/data"}  # fmt: skip


def test_stop_on_io_errors_sets_both_policies_on_every_disk_and_keeps_the_rest() -> None:
    root = etree.fromstring(stop_on_io_errors(LIVE.encode()))
    drivers = [d.find("driver") for d in root.findall("devices/disk")]
    assert all(d is not None for d in drivers)
    assert {(d.get("error_policy"), d.get("rerror_policy")) for d in drivers if d is not None} == {
        ("stop", "stop")
    }
    assert [d.get("type") for d in drivers if d is not None] == ["qcow2", "qcow2", None]
    assert backed_targets(etree.tostring(root, encoding="unicode")) == {"vda"}
