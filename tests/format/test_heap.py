"""keep_freed_buffers: freed lz4-piece-sized blocks are reused, not faulted in anew."""

from __future__ import annotations

import subprocess
import sys

_CHURN = """
import resource, sys
from vbbackup.format.heap import keep_freed_buffers
if sys.argv[1] == "keep":
    assert keep_freed_buffers()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
from concurrent.futures import ThreadPoolExecutor
before = faults()
with ThreadPoolExecutor(2) as pool:  # made in worker threads, freed here, as in a backup
    pending = []
    for i in range(300):
        pending.append(pool.submit(bytes, 600 * 1024 + i))  # like a compressed piece
        if len(pending) > 4:
            pending.pop(0).result()
print(faults() - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_freed_pieces_are_reused() -> None:
    # without: every piece is a fresh mmap (about 150 faults each); with: the same pages
    assert _faults("default") > 300 * 100
    assert _faults("keep") < 3000
