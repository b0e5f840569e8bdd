"""check: the three views side by side, each inconsistency named with its fix."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from click.testing import CliRunner

from tests.harness.fixtures import own_vm
from tests.harness.libvirtd import capabilities, ensure_libvirtd
from tests.harness.vm import DiskSpec, TestVM
from tests.integration.vnb_sets import MiB, make_virtnbdbackup_chain
from vbbackup.cli import main
from vbbackup.engine.check import (
    Bitmap,
    CheckConfig,
    CheckReport,
    DomainState,
    SetState,
    check,
    findings,
    render,
)


def _domain(**changes: object) -> DomainState:
    state = DomainState(
        name="vm",
        running=False,
        images={"vda": Path("/img/vda.qcow2")},
        checkpoints={"virtnbdbackup.0": {"vda": "virtnbdbackup.0"}},
        order=["virtnbdbackup.0"],
        bitmaps={"vda": {"virtnbdbackup.0": Bitmap("virtnbdbackup.0", ("auto",))}},
    )
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def _set(chain: list[str], saved: set[str] | None = None) -> SetState:
    levels = {n: "full" if k == 0 else "inc" for k, n in enumerate(chain)}
    return SetState(Path("/b/set"), chain, levels, set(chain) if saved is None else saved)


def test_consistent_state_has_no_findings() -> None:
    report = CheckReport(_domain(), _set(["virtnbdbackup.0"]))
    assert findings(report.domain, report.backup) == []
    assert render(report)[-1] == "consistent: no problems found"


def test_missing_bitmap_is_named_with_a_new_full() -> None:
    (finding,) = findings(_domain(bitmaps={"vda": {}}), None)
    assert finding.problem == (
        "checkpoint virtnbdbackup.0: disk vda (/img/vda.qcow2) has no bitmap "
        "'virtnbdbackup.0'; no incremental backup can be read from it"
    )
    assert finding.fix == (
        "virsh checkpoint-delete vm virtnbdbackup.0 --metadata, then vbbackup full vm -o NEW_DIR"
    )


def test_in_use_bitmap_of_a_shut_off_domain_is_inconsistent() -> None:
    bitmaps = {"vda": {"virtnbdbackup.0": Bitmap("virtnbdbackup.0", ("in-use", "auto"))}}
    (finding,) = findings(_domain(bitmaps=bitmaps), None)
    assert "is inconsistent" in finding.problem
    assert finding.fix.startswith("qemu-img bitmap --remove /img/vda.qcow2 virtnbdbackup.0")
    assert findings(_domain(bitmaps=bitmaps, running=True), None) == []


def test_lost_checkpoint_is_redefined_from_the_set() -> None:
    domain = _domain(checkpoints={}, order=[])
    (finding,) = findings(domain, _set(["virtnbdbackup.0"]))
    assert finding.problem == "checkpoint virtnbdbackup.0 of the backup set is unknown to libvirt"
    assert finding.fix == (
        "vbbackup inc vm -o /b/set redefines it, or: virsh checkpoint-create vm "
        "/b/set/checkpoints/virtnbdbackup.0.xml --redefine"
    )
    orphan, lost = findings(domain, _set(["virtnbdbackup.0"], saved=set()))
    assert (
        orphan.fix
        == "qemu-img bitmap --remove /img/vda.qcow2 virtnbdbackup.0 (with the domain shut off)"
    )
    assert lost.fix == (
        "vbbackup full vm -o NEW_DIR "
        "(/b/set/checkpoints/virtnbdbackup.0.xml is missing, it cannot be redefined)"
    )


def test_orphan_bitmap_and_stale_job_and_foreign_checkpoints() -> None:
    bitmaps = {
        "vda": {n: Bitmap(n) for n in ("virtnbdbackup.0", "virtnbdbackup.1", "stray")},
    }
    domain = _domain(
        checkpoints={
            "virtnbdbackup.0": {"vda": "virtnbdbackup.0"},
            "virtnbdbackup.1": {"vda": "virtnbdbackup.1"},
        },
        order=["virtnbdbackup.0", "virtnbdbackup.1"],
        bitmaps=bitmaps,
        job_active=True,
    )
    problems = [f.problem for f in findings(domain, _set(["virtnbdbackup.0"]))]
    assert problems == [
        "a block job is running on vm (a backup left by a killed run?)",
        "disk vda (/img/vda.qcow2) holds bitmap 'stray' that no checkpoint of vm owns",
        "libvirt has checkpoints newer than the set's last (virtnbdbackup.0): "
        "virtnbdbackup.1; another backup tool or set uses vm",
    ]


# -- the real stack -----------------------------------------------------------------------


@pytest.fixture
def vm() -> Iterator[TestVM]:
    with own_vm([DiskSpec(size=16 * MiB)], "virtnbdbackup") as vm:
        yield vm


def _cli(*args: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["check", *args], prog_name="vbbackup")
    return result.exit_code, result.output.splitlines()


@pytest.mark.integration
def test_lost_checkpoint_then_lost_bitmap(vm: TestVM, tmp_path: Path) -> None:
    backup = tmp_path / "set"
    steps = [[("write", 0, MiB, 0x11)], [("write", 2 * MiB, MiB, 0x22)]]
    make_virtnbdbackup_chain(vm, backup, compress=False, writes_per_step=steps)
    assert vm.dom is not None

    code, lines = _cli(vm.name, "-o", str(backup))
    assert code == 0, lines
    assert lines[-1] == "consistent: no problems found"
    assert lines[2].split() == ["virtnbdbackup.0", "yes", "bitmap", "full"]
    assert lines[3].split() == ["virtnbdbackup.1", "yes", "bitmap", "inc"]

    # libvirt loses the newest checkpoint (the bitmap stays in QEMU)
    cp = vm.dom.checkpointLookupByName("virtnbdbackup.1")
    cp.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    code, lines = _cli(vm.name, "-o", str(backup))
    assert code == 1
    assert lines[3].split() == ["virtnbdbackup.1", "-", "bitmap", "inc"]
    assert (
        lines[-2] == "problem: checkpoint virtnbdbackup.1 of the backup set is unknown to libvirt"
    )
    fix = lines[-1].split(", or: ", 1)[1]
    assert fix.startswith("virsh checkpoint-create")
    done = subprocess.run(fix.split(), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert _cli(vm.name, "-o", str(backup))[0] == 0

    # the image loses a bitmap while the domain is shut off
    vm.dom.destroy()
    image = vm.disk_path("vda")
    subprocess.run(["qemu-img", "bitmap", "--remove", str(image), "virtnbdbackup.1"], check=True)
    report = check(CheckConfig(vm.name, backup))
    assert [f.problem for f in report.findings] == [
        f"checkpoint virtnbdbackup.1: disk vda ({image}) has no bitmap 'virtnbdbackup.1'; "
        "no incremental backup can be read from it"
    ]


@pytest.mark.integration
def test_unknown_domain_is_one_line() -> None:
    missing = capabilities().missing("libvirtd")
    if missing:
        pytest.skip("needs libvirtd")
    ensure_libvirtd()
    code, lines = _cli("vbtest-no-such-domain")
    assert code == 6
    assert lines == ["vbbackup: error: domain 'vbtest-no-such-domain' not found at qemu:///system"]
