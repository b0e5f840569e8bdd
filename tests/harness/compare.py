"""The outcome a user cares about: an image reads exactly as the expected raw image."""

from __future__ import annotations

import subprocess
from pathlib import Path


def assert_identical(image: Path, expected: Path, fmt: str | None = None) -> None:
    """``qemu-img compare`` of ``image`` (``fmt``, or probed) against the raw ``expected``."""
    argv = ["qemu-img", "compare", "-q", *(["-f", fmt] if fmt else []), "-F", "raw"]
    done = subprocess.run(
        [*argv, str(image), str(expected)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{image} differs from {expected}: {done.stdout}{done.stderr}"
