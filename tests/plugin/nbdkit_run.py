"""Run the vbmount plugin under a private nbdkit for tests and benchmarks."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import nbd

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "nbdkit_plugin" / "vbmount.py"


def plugin_argv(params: dict[str, str], filters: Sequence[str] = ()) -> list[str]:
    """``nbdkit python vbmount.py key=value...`` (without the server options)."""
    argv = ["python", str(PLUGIN)]
    argv += [f"{k}={v}" for k, v in params.items()]
    return [*(f"--filter={f}" for f in filters), *argv]


@contextmanager
def connect(params: dict[str, str], filters: Sequence[str] = ()) -> Iterator[nbd.NBD]:
    """A libnbd handle on a captive nbdkit (``-s``): no socket, no leftovers."""
    h = nbd.NBD()
    try:
        h.connect_command(["nbdkit", "-s", "--exit-with-parent", *plugin_argv(params, filters)])
        yield h
    finally:
        if h.aio_is_ready():
            h.shutdown()
        del h  # libnbd 1.14 closes the handle (and reaps nbdkit) on deletion


def run_captive(params: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    """``nbdkit -U - ... --run COMMAND``: COMMAND sees the export as ``$uri``."""
    return subprocess.run(
        ["nbdkit", "-U", "-", "--exit-with-parent", *plugin_argv(params), "--run", command],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
