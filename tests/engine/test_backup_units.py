"""Pure parts of the backup engine: disk selection, directory rules, error wording."""

from __future__ import annotations

import json
import random
from pathlib import Path

import libvirt
import pytest

from vbbackup.engine.backup import BackupConfig, select_disks
from vbbackup.engine.backupset import BackupDir
from vbbackup.engine.writeback import WritebackFile
from vbbackup.errors import BackupBusyError, ChainError, LibvirtError, TargetExistsError, UsageError
from vbbackup.virt import checkpoint_index, domain_disks
from vbbackup.virt.checkpoints import checkpoint_xml
from vbbackup.virt.job import backup_xml, begin_error

DOMAIN_XML = """<domain type='qemu'><name>vm1</name><devices>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <source file='/img/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='disk'><driver name='qemu' type='raw'/>
    <source file='/img/vdb.raw'/><target dev='vdb' bus='virtio'/></disk>
  <disk type='block' device='lun'><driver name='qemu' type='raw'/>
    <source dev='/dev/sdx'/><target dev='sda' bus='scsi'/></disk>
  <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
    <target dev='hdc' bus='ide'/><readonly/></disk>
  <disk type='network' device='disk'><driver name='qemu' type='qcow2'/>
    <source protocol='rbd' name='pool/img'/><target dev='vdc' bus='virtio'/></disk>
  <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>
    <source pool='default' volume='vm1-data.qcow2'/><target dev='vdd' bus='virtio'/></disk>
  <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
    <target dev='vde' bus='virtio'/></disk>
</devices></domain>"""


def config(**kw: object) -> BackupConfig:
    return BackupConfig(domain="vm1", level="full", output=Path("/nonexistent"), **kw)  # type: ignore[arg-type]


def test_disks_are_read_from_the_domain_xml() -> None:
    disks = {d.target: d for d in domain_disks(DOMAIN_XML)}
    assert disks["vda"].path == "/img/vda.qcow2" and disks["vda"].bitmap_capable
    assert disks["sda"].device == "lun" and disks["sda"].path == "/dev/sdx"
    assert not disks["sda"].bitmap_capable and not disks["vdb"].bitmap_capable
    assert disks["hdc"].removable and disks["hdc"].path is None
    assert disks["vdc"].type == "network" and disks["vdc"].bitmap_capable
    assert disks["vdd"].type == "volume" and disks["vdd"].has_medium and disks["vdd"].path is None
    assert not disks["vde"].has_medium


def test_selection_skips_raw_lun_and_cdrom_with_reasons() -> None:
    chosen, skipped = select_disks(domain_disks(DOMAIN_XML), config(), "full")
    assert [d.target for d in chosen] == ["vda", "vdc", "vdd"]
    assert skipped == {
        "vdb": "raw image cannot carry checkpoints (--raw copies it whole)",
        "sda": "direct-attached LUN cannot carry checkpoints (--raw copies it whole)",
        "hdc": "cdrom drives are never backed up",
        "vde": "no medium",
    }


def test_raw_disks_join_full_and_copy_but_not_inc() -> None:
    chosen, _ = select_disks(domain_disks(DOMAIN_XML), config(raw=True), "full")
    assert [d.target for d in chosen] == ["vda", "vdb", "sda", "vdc", "vdd"]
    chosen, skipped = select_disks(domain_disks(DOMAIN_XML), config(raw=True), "inc")
    assert [d.target for d in chosen] == ["vda", "vdc", "vdd"]
    assert skipped["vdb"] == "raw disk: only full and copy back it up"


def test_include_exclude_and_unknown_names() -> None:
    chosen, skipped = select_disks(domain_disks(DOMAIN_XML), config(include=("vdc",)), "inc")
    assert [d.target for d in chosen] == ["vdc"] and skipped["vda"] == "not included"
    chosen, skipped = select_disks(domain_disks(DOMAIN_XML), config(exclude=("vdc",)), "inc")
    assert [d.target for d in chosen] == ["vda", "vdd"] and skipped["vdc"] == "excluded"
    with pytest.raises(
        UsageError, match=r"has no disk 'vdz' \(disks: hdc, sda, vda, vdb, vdc, vdd, vde\)"
    ):
        select_disks(domain_disks(DOMAIN_XML), config(exclude=("vdz",)), "full")
    with pytest.raises(UsageError, match="nothing to back up in domain 'vm1'"):
        select_disks(domain_disks(DOMAIN_XML), config(exclude=("vda", "vdc", "vdd")), "full")


def test_backup_dir_names_and_rules(tmp_path: Path) -> None:
    out = BackupDir(tmp_path, "vm1")
    assert out.data_path("vda", "full", "virtnbdbackup.0").name == "vda.full.data"
    assert out.data_path("vda", "inc", "virtnbdbackup.3").name == "vda.inc.virtnbdbackup.3.data"
    assert out.data_path("vda", "diff", "1764140000").name == "vda.diff.1764140000.data"
    assert out.data_path("vda", "copy", "copy").name == "vda.copy.data"
    assert out.checkpoints() == []
    out.check_new_chain()
    (tmp_path / "vda.copy.data").write_bytes(b"")
    out.check_new_chain()  # a copy is no chain
    (tmp_path / "vda.full.data").write_bytes(b"")
    with pytest.raises(TargetExistsError, match="an earlier full backup did not finish"):
        out.check_new_chain()
    out.write_checkpoints(["virtnbdbackup.0", "virtnbdbackup.1"])
    assert json.loads((tmp_path / "vm1.cpt").read_text()) == ["virtnbdbackup.0", "virtnbdbackup.1"]
    assert out.checkpoints() == ["virtnbdbackup.0", "virtnbdbackup.1"]
    with pytest.raises(TargetExistsError, match="already holds a backup chain"):
        out.check_new_chain()
    (tmp_path / "vm1.cpt").write_text("{nope")
    with pytest.raises(ChainError, match="bad checkpoint list: "):
        out.checkpoints()


def test_a_second_diff_within_one_second_gets_the_next_stamp(tmp_path: Path) -> None:
    out = BackupDir(tmp_path, "vm1")
    assert out.diff_ident(1000) == "1000"
    (tmp_path / "vdb.diff.1000.data.partial").write_bytes(b"")  # a dead run's, any disk
    (tmp_path / "vmconfig.1001.xml").write_text("<domain/>")  # a run that wrote no stream yet
    (tmp_path / "vda.diff.1002.data").write_bytes(b"")
    assert out.diff_ident(1000) == "1003"
    assert out.diff_ident(999) == "999"


def test_checkpoint_names_and_job_xml() -> None:
    assert checkpoint_index("virtnbdbackup.12") == 12
    assert checkpoint_index("virtnbdbackup.x") is None and checkpoint_index("other.1") is None
    xml = checkpoint_xml("virtnbdbackup.1", ["vda"], ["vdb"])
    assert "<disk name=\"vda\" checkpoint='bitmap'/>" in xml
    assert "<disk name=\"vdb\" checkpoint='no'/>" in xml
    job = backup_xml(Path("/var/tmp/s.sock"), {"vda": Path("/var/tmp/a&b")}, ["vdb"], "cp<1>")
    assert "<incremental>cp&lt;1&gt;</incremental>" in job
    assert 'scratch file="/var/tmp/a&amp;b"' in job and 'socket="/var/tmp/s.sock"' in job


def _libvirt_error(code: int, message: str) -> libvirt.libvirtError:
    err = libvirt.libvirtError(message)
    err.err = (code, 0, message, 2, None, None, None, 0, 0)
    return err


@pytest.mark.parametrize(
    ("code", "message", "kind", "wanted"),
    [
        (libvirt.VIR_ERR_NO_SUPPORT, "this function is not supported by the connection driver",
         LibvirtError, "add <qemu:capabilities><qemu:add capability='incremental-backup'/>"),
        (libvirt.VIR_ERR_INTERNAL_ERROR, "unable to execute QEMU command 'nbd-server-start': "
         "Failed to bind socket to /var/tmp/vbbackup-vm1-1.sock: Permission denied",
         LibvirtError, "'/var/tmp/vbbackup-*.sock rw,'"),
        (libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running", LibvirtError,
         "virsh start --paused vm1"),
        (libvirt.VIR_ERR_OPERATION_INVALID, "there is already an active job: another backup",
         BackupBusyError, "already runs a job"),
    ],
)  # fmt: skip
def test_begin_errors_name_the_fix(code: int, message: str, kind: type, wanted: str) -> None:
    err = begin_error("vm1", _libvirt_error(code, message), Path("/var/tmp/vbbackup-vm1-1.sock"))
    assert isinstance(err, kind)
    assert wanted in str(err)


def test_writeback_file_keeps_order_and_calls_back_after_writing(tmp_path: Path) -> None:
    rng = random.Random(3)
    pieces = [rng.randbytes(rng.choice([3, 40, 70_000, 9 * 1024 * 1024])) for _ in range(40)]
    written: list[int] = []
    path = tmp_path / "out"
    with open(path, "wb") as f, WritebackFile(f) as out:
        for i, piece in enumerate(pieces):
            out.write(memoryview(piece))
            out.call_after(lambda n: written.append(n), i)
    assert written == list(range(40))
    assert path.read_bytes() == b"".join(pieces)


def test_writeback_file_raises_the_writer_threads_error(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as f:
        out = WritebackFile(f)
        f.close()  # every write of the thread now fails
        out.write(b"x" * 100_000)
        with pytest.raises(ValueError, match="closed file"):
            out.close()
