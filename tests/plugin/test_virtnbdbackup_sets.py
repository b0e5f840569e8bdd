"""Chains made by the real virtnbdbackup and by vbbackup, served by real nbdkit."""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.fixtures import own_vm
from tests.harness.vm import DiskSpec, TestVM
from tests.integration.vnb_sets import (
    MiB,
    default_steps,
    make_vbbackup_chain,
    make_virtnbdbackup_chain,
)
from tests.plugin.nbdkit_run import run_captive
from vbbackup.chain import BackupSet, open_view

pytestmark = pytest.mark.integration
SIZE = 32 * MiB


@pytest.fixture(scope="module")
def vnb_vm() -> Iterator[TestVM]:
    """Holds the libvirt connection; each set gets a VM of its own (fresh disk)."""
    with own_vm([DiskSpec(size=MiB)], "virtnbdbackup", "nbdkit_python") as vm:
        yield vm


@pytest.fixture(
    scope="module",
    params=[
        ("virtnbdbackup", False),
        ("virtnbdbackup", True),
        ("vbbackup", False),
        ("vbbackup", True),
    ],
    ids=["virtnbdbackup-plain", "virtnbdbackup-lz4", "vbbackup-plain", "vbbackup-lz4"],
)
def vnb_set(
    request: pytest.FixtureRequest, vnb_vm: TestVM, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[tuple[str, Path]]]:
    """One chain per tool and compression, each on a fresh VM's disk."""
    tool, compress = request.param
    outdir = tmp_path_factory.mktemp(tool) / "set"
    steps = default_steps(SIZE)
    steps.append([("write", 3 * MiB, MiB, 0x77)])  # a differential on top of the last inc
    make = make_virtnbdbackup_chain if tool == "virtnbdbackup" else make_vbbackup_chain
    with TestVM(vnb_vm.conn, [DiskSpec(size=SIZE)]) as vm:
        points = make(
            vm,
            outdir,
            compress=compress,
            writes_per_step=steps,
            levels=["full", "inc", "inc", "diff"],
        )
        # the expected images live in the VM's directory: keep copies
        kept = []
        for name, image in points:
            copy = outdir.parent / image.name
            shutil.copyfile(image, copy)
            kept.append((name, copy))
    return outdir, kept


def test_points_match_the_chain(vnb_set: tuple[Path, list[tuple[str, Path]]]) -> None:
    outdir, points = vnb_set
    bset = BackupSet(outdir)
    assert [p.name for p in bset.points()] == [name for name, _ in points]
    info = bset.disk_info()
    assert (info.name, info.virtual_size, info.disk_format) == ("vda", SIZE, "qcow2")
    qemu = bset.qemu_info(bset.resolve(until=points[1][0]))
    assert qemu is not None and qemu["virtual-size"] == SIZE


def test_every_point_compares_equal(vnb_set: tuple[Path, list[tuple[str, Path]]]) -> None:
    outdir, points = vnb_set
    for name, expected in points:
        done = run_captive(
            {"dir": str(outdir), "until": name},
            f'qemu-img compare -f raw -F raw {shlex.quote(str(expected))} "$uri"',
        )
        assert done.returncode == 0, f"{name}: {done.stdout}{done.stderr}"


def test_view_reads_equal_the_expected_images(
    vnb_set: tuple[Path, list[tuple[str, Path]]],
) -> None:
    outdir, points = vnb_set
    for name, expected in points:
        with open_view(outdir, until=name) as view:
            assert view.read(0, view.size) == expected.read_bytes(), name


def test_map_shows_holes_where_nothing_was_written(
    vnb_set: tuple[Path, list[tuple[str, Path]]],
) -> None:
    outdir, _ = vnb_set
    done = run_captive({"dir": str(outdir)}, 'nbdinfo --map --json "$uri"')
    assert done.returncode == 0, done.stderr
    runs = [(e["offset"], e["length"], e["type"] & 1) for e in json.loads(done.stdout)]
    assert sum(n for _, n, _ in runs) == SIZE

    def kind_at(offset: int) -> int:
        return next(t for off, n, t in runs if off <= offset < off + n)

    assert kind_at(SIZE - 1) == 1  # the last quarter was never written
    assert kind_at(12 * MiB) == 1  # a hole between written ranges
    assert kind_at(MiB // 2) == 0  # written in the full, still data
    assert kind_at(3 * MiB) == 0  # written before the differential
    data = sum(n for _, n, t in runs if t == 0)
    assert data <= 8 * MiB, runs
