"""Benchmark of ``vbbackup restore --live``: time to running, and copy speed against a plain
``vbbackup restore`` of the same set.

    .venv/bin/python bench/live_restore.py [--workdir /var/tmp/vbbench-live]
        [--sizes-mib 1024,8192] [--data-mib 256] [--incs 5] [--compress]

Per size: a synthetic chain (bench/restore.py's: a full with --data-mib of random data in
4 MiB extents, holes between, and --incs incrementals) of one disk; then, in one run,
  restore   vbbackup restore SET -o DIR --format qcow2        (wall time, image fsynced)
  live      vbbackup restore SET -o DIR --live --json          (running_seconds and
            complete_seconds from its JSON; the copy is complete - running)
and the ratio restore / copy (goal: at least 0.7; time to running: under 5 s whatever the
size). The live-restored domain is removed afterwards. Needs root and libvirtd.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import restore as restore_bench  # noqa: E402  (bench/restore.py: the set generator)

VBBACKUP = restore_bench.VBBACKUP


def remove_domain(name: str) -> None:
    subprocess.run(["virsh", "-q", "destroy", name], capture_output=True, check=False)
    subprocess.run(["virsh", "-q", "undefine", name], capture_output=True, check=False)


def run_restore(backup: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    subprocess.run([*VBBACKUP, "restore", str(backup), "-o", str(out), "--format", "qcow2",
                    "--no-progress"], check=True, capture_output=True)  # fmt: skip
    return time.monotonic() - started


def run_live(backup: Path, out: Path, name: str) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    remove_domain(name)
    done = subprocess.run([*VBBACKUP, "restore", str(backup), "-o", str(out), "--live",
                           "--name", name, "--json", "--no-progress"],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"restore --live failed: {done.stderr.strip()}")
    result = json.loads(done.stdout)
    remove_domain(name)
    return float(result["running_seconds"]), float(result["complete_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/vbbench-live"))
    parser.add_argument("--sizes-mib", default="1024,8192")
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--incs", type=int, default=5)
    parser.add_argument("--inc-percent", type=int, default=5)
    parser.add_argument("--compress", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.workdir.chmod(0o755)  # QEMU (libvirt-qemu) opens the images in it
    rows = []
    for size in (int(s) for s in args.sizes_mib.split(",")):
        args.size_mib = size
        work = args.workdir / f"{size}"
        _, chain = restore_bench.make_sets(work, args)
        work.chmod(0o755)
        plain = run_restore(chain, work / "restored")
        running, complete = run_live(chain, work / "live", f"vbbench-live-{size}")
        copy = complete - running
        rows.append((size, running, complete, copy, plain, plain / copy))
        shutil.rmtree(work, ignore_errors=True)
    kind = "lz4" if args.compress else "uncompressed"
    print(f"| disk ({kind}, {args.data_mib} MiB data, {args.incs} incs) | to running | "
          "complete | copy | `restore` | restore / copy |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for size, running, complete, copy, plain, ratio in rows:
        print(f"| {size} MiB | {running:.2f} s | {complete:.2f} s | {copy:.2f} s | "
              f"{plain:.2f} s | {ratio:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
