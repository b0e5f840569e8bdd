"""The admin options of `vbbackup full|inc`, end to end on real domains through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest
from click.testing import CliRunner

from tests.harness.backup import cp, pull_backup
from tests.harness.vm import DiskSpec, MiB, TestVM
from vbbackup.chain import open_view, read_meta
from vbbackup.cli import main

pytestmark = pytest.mark.integration


def run(*args: str) -> tuple[int, str]:
    result = CliRunner(mix_stderr=False).invoke(main, list(args), prog_name="vbbackup")
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def _reads_as(directory: Path, until: str, expected: Path) -> bool:
    with open_view(directory, until=until) as view:
        return view.read(0, view.size) == expected.read_bytes()


def _vm(make_vm) -> TestVM:  # type: ignore[no-untyped-def]
    return make_vm(disks=[DiskSpec("vda", 16 * MiB)])  # type: ignore[no-any-return]


def test_shut_off_domain_full_and_inc_with_start_domain(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    out = tmp_path / "set"
    vm.write_pattern("vda", 0, MiB, 0x11)
    first = vm.expected("vda")
    vm.dom.destroy()
    code, text = run("full", vm.name, "-o", str(out), "--no-progress")
    assert code == 6
    assert text.splitlines()[-1] == (
        f"vbbackup: error: domain {vm.name!r} is not running: start it (paused is enough: "
        f"virsh start --paused {vm.name}), or give --start-domain"
    )
    code, text = run("full", vm.name, "-o", str(out), "--start-domain", "--no-progress")
    assert code == 0, text
    assert f"started {vm.name} paused for the backup" in text
    assert not vm.dom.isActive()
    vm.dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
    vm.write_pattern("vda", 4 * MiB, MiB, 0x22)
    second = vm.expected("vda")
    vm.dom.destroy()
    code, text = run("inc", vm.name, "-o", str(out), "--start-domain", "--no-progress")
    assert code == 0, text
    assert not vm.dom.isActive()
    assert _reads_as(out, cp(out, 0), first)
    assert _reads_as(out, cp(out, 1), second)


def test_estimate_writes_nothing_and_threshold_skips(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    out = tmp_path / "set"
    assert run("full", vm.name, "-o", str(out), "--no-progress")[0] == 0
    code, text = run("full", vm.name, "-o", str(tmp_path / "other"), "--estimate")
    assert code == 2
    assert "--estimate and --threshold apply to inc and diff backups; this run is a full" in text
    vm.write_pattern("vda", MiB, 2 * MiB, 0x33)
    before = sorted(p.name for p in out.rglob("*"))
    estimate = f"estimate: {2 * MiB} bytes changed since {cp(out, 0)} (vda {2 * MiB})\n"
    invoke = CliRunner(mix_stderr=False).invoke
    quiet = invoke(main, ["inc", vm.name, "-o", str(out), "-q", "--estimate"])
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, estimate, "")  # -q: still shown
    as_json = invoke(main, ["inc", vm.name, "-o", str(out), "--estimate", "--json"])
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout)["estimate"] == {
        "since": cp(out, 0),
        "disks": {"vda": 2 * MiB},
        "bytes": 2 * MiB,
    }
    assert sorted(p.name for p in out.rglob("*")) == before
    code, text = run("inc", vm.name, "-o", str(out), "--threshold", str(3 * MiB))
    assert code == 0, text
    assert f"skipped: {2 * MiB} bytes changed since {cp(out, 0)}, less than" in text
    assert not list(out.glob("vda.inc.*"))
    code, text = run("inc", vm.name, "-o", str(out), "--threshold", str(MiB), "--no-progress")
    assert code == 0, text
    written = read_meta(out / f"vda.inc.{cp(out, 1)}.data").data_size
    assert abs(written - 2 * MiB) <= 64 * 1024  # the estimate was within a bitmap granule


def _remove_bitmap(vm: TestVM, name: str) -> None:
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(vm.dom, '{"execute": "query-block"}', 0))
    (node,) = [d["inserted"]["node-name"] for d in reply["return"] if d.get("inserted")]
    remove = {"execute": "block-dirty-bitmap-remove", "arguments": {"node": node, "name": name}}
    libvirt_qemu.qemuMonitorCommand(vm.dom, json.dumps(remove), 0)


def test_missing_bitmap_falls_back_to_a_new_chain(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    out = tmp_path / "set"
    assert run("full", vm.name, "-o", str(out), "--no-progress")[0] == 0
    _remove_bitmap(vm, cp(out, 0))
    vm.write_pattern("vda", 0, MiB, 0x44)
    expected = vm.expected("vda")
    code, text = run("inc", vm.name, "-o", str(out), "--no-fallback", "--no-progress")
    assert code == 4
    assert text.splitlines()[-1] == (
        f"vbbackup: error: the bitmap of checkpoint {cp(out, 0)} is missing or broken in "
        f"QEMU for disk vda of {vm.name}: no incremental backup can be read from it; start a "
        "new chain with `vbbackup full` (--no-fallback)"
    )
    code, text = run("inc", vm.name, "-o", str(out), "--no-progress")
    assert code == 0, text
    assert f"warning: the bitmap of checkpoint {cp(out, 0)} is missing" in text
    assert f"falling back to a full backup into a new chain: {tmp_path / 'set.1'}" in text
    assert not list(out.glob("vda.inc.*"))  # the old chain is left as it was
    assert _reads_as(tmp_path / "set.1", cp(tmp_path / "set.1", 0), expected)


def test_checkpointdir_keeps_the_xml_elsewhere_and_redefines_from_it(
    make_vm, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    out, cps = tmp_path / "set", tmp_path / "cps"
    args = ["-o", str(out), "--checkpointdir", str(cps), "--no-progress"]
    assert run("full", vm.name, *args)[0] == 0
    assert [p.name for p in cps.iterdir()] == [f"{cp(out, 0)}.xml"]
    assert not list((out / "checkpoints").glob("*.xml")) if (out / "checkpoints").exists() else True
    vm.dom.checkpointLookupByName(cp(out, 0)).delete(
        libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
    )
    vm.write_pattern("vda", 2 * MiB, MiB, 0x55)
    expected = vm.expected("vda")
    code, text = run("inc", vm.name, *args)
    assert code == 0, text
    assert _reads_as(out, cp(out, 1), expected)
    assert sorted(p.name for p in cps.iterdir()) == [f"{cp(out, 0)}.xml", f"{cp(out, 1)}.xml"]


def test_foreign_job_needs_kill_jobs(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    out = tmp_path / "set"
    with pull_backup(vm):  # a job of another tool, still running
        code, text = run("full", vm.name, "-o", str(out), "--no-progress")
        assert code == 8
        assert "abort it with --kill-jobs" in text.splitlines()[-1]
        code, text = run("full", vm.name, "-o", str(out), "--kill-jobs", "--no-progress")
        assert code == 0, text
        assert f"aborted the job that was running on {vm.name} (--kill-jobs)" in text


def test_running_domain_without_agent_warns_and_no_freeze_is_silent(
    make_vm, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    code, text = run("full", vm.name, "-o", str(tmp_path / "paused"), "--no-progress")
    assert code == 0, text
    assert "not frozen" not in text  # a paused guest runs nothing
    paused = "crash-consistent: the guest was paused (it ran nothing to freeze)"
    assert paused in text.splitlines()
    vm.dom.resume()
    try:
        code, text = run("full", vm.name, "-o", str(tmp_path / "a"), "--no-progress")
        assert code == 0, text
        warnings = [line for line in text.splitlines() if "filesystems not frozen" in line]
        assert len(warnings) == 1
        assert "agent" in warnings[0]
        (line,) = [x for x in text.splitlines() if x.startswith("crash-consistent: ")]
        assert line.startswith("crash-consistent: guest agent: ")
        code, text = run("full", vm.name, "-o", str(tmp_path / "b"), "--no-freeze", "--no-progress")
        assert code == 0, text
        assert "not frozen" not in text
        assert "crash-consistent: --no-freeze" in text.splitlines()
        code, text = run("full", vm.name, "-o", str(tmp_path / "c"), "--no-freeze", "--json", "-q")
        assert json.loads(text)["consistency"] == {"frozen": False, "reason": "--no-freeze"}
    finally:
        vm.dom.suspend()
    # after the fact: the set says it, point by point (the run log too)
    for name, expected in (("paused", paused), ("b", "crash-consistent: --no-freeze")):
        code, text = run("info", str(tmp_path / name))
        assert code == 0, text
        assert f"  {'':<24} {expected}" in text.splitlines()
        (log,) = (tmp_path / name).glob("backup.full.*.log")
        assert expected in log.read_text()
        report = json.loads(run("info", str(tmp_path / name), "--json")[1])
        assert report["chain"][0]["consistency"]["frozen"] is False


def test_lost_checkpoint_without_xml_falls_back(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    out = tmp_path / "set"
    assert run("auto", vm.name, "-o", str(out), "--no-progress")[0] == 0
    vm.dom.checkpointLookupByName(cp(out, 0)).delete(
        libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
    )
    (out / "checkpoints" / f"{cp(out, 0)}.xml").unlink()
    vm.write_pattern("vda", 0, MiB, 0x66)
    expected = vm.expected("vda")
    code, text = run("auto", vm.name, "-o", str(out), "--no-progress")
    assert code == 0, text
    assert f"warning: checkpoint {cp(out, 0)} of the chain" in text
    assert _reads_as(tmp_path / "set.1", cp(tmp_path / "set.1", 0), expected)


def test_copy_of_a_shut_off_domain_needs_no_option(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    vm.write_pattern("vda", 3 * MiB, MiB, 0x77)
    expected = vm.expected("vda")
    vm.dom.destroy()
    code, text = run("copy", vm.name, "-o", str(tmp_path / "copy"), "--no-progress")
    assert code == 0, text
    assert not vm.dom.isActive()
    assert vm.dom.listAllCheckpoints() == []
    assert _reads_as(tmp_path / "copy", "copy", expected)


def test_auto_with_threshold_starts_the_chain_then_skips(make_vm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vm = _vm(make_vm)
    out = tmp_path / "set"
    args = ["auto", vm.name, "-o", str(out), "--threshold", str(MiB), "--no-progress"]
    code, text = run(*args)
    assert code == 0, text
    assert (out / "vda.full.data").exists()
    vm.write_pattern("vda", 0, 64 * 1024, 0x12)
    code, text = run(*args)
    assert code == 0, text
    assert f"skipped: 65536 bytes changed since {cp(out, 0)}" in text
    assert not list(out.glob("vda.inc.*"))
