"""`pip install .` into a fresh venv restores and serves: the plugin ships with the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chain.chains import Model, write_chain

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
SIZE = 1024 * 1024
STEPS = [[(0, b"\x11" * 65536), (65536, SIZE - 65536)], [(4096, b"\x22" * 8192)]]


def test_an_installed_package_restores_outside_the_checkout(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)  # fmt: skip
    # the dependencies come from Debian's packages (scripts/setup.sh); no network
    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info beside it
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info")
    )
    install = [str(venv / "bin/pip"), "install", "-q", "--no-deps", "--no-build-isolation",
               str(source)]  # fmt: skip
    subprocess.run(install, check=True, cwd=tmp_path, capture_output=True)
    plugin = subprocess.run(
        [str(venv / "bin/python"), "-c", "from vbbackup.nbdio.server import PLUGIN; print(PLUGIN)"],
        check=True, capture_output=True, text=True, cwd="/",
    ).stdout.strip()  # fmt: skip
    assert plugin.startswith(str(venv)) and plugin.endswith("nbdkit_plugin/vbmount.py")
    backup = tmp_path / "set"
    write_chain(backup, SIZE, STEPS)
    model = Model(SIZE)
    for frames in STEPS:
        model.apply(frames)
    out = tmp_path / "out"
    done = subprocess.run(
        [str(venv / "bin/vbbackup"), "restore", str(backup), "-o", str(out), "--format", "raw"],
        capture_output=True, text=True, cwd="/", env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (out / "vda.raw").read_bytes() == bytes(model.data)
