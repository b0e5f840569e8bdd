"""Benchmark of ``vbbackup full|inc`` against the NBD limit (nbdcopy) and virtnbdbackup.

    .venv/bin/python bench/backup.py [--size-mib 2048] [--data-mib 1024] [--inc-percent 5]

One throwaway paused VM (tests/harness) with one qcow2 disk of --size-mib holding
--data-mib of data in 16 MiB extents with holes between them, half random, half
compressible text. Measured in one run, each into a fresh directory:
  nbdcopy      from a pull backup job's NBD export into a file (the limit; --flush)
  vbbackup     full, full --compress, inc after --inc-percent new data
  virtnbdbackup the same three runs, when installed
Wall time of the whole command (job start to end, files fsync'ed by ours); MB/s =
data bytes read / time; peak RSS of the process (wait4). Each run is repeated
--repeat times, interleaved, and the median taken (the machine is shared).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

from tests.harness.backup import pull_backup  # noqa: E402
from tests.harness.libvirtd import URI, ensure_libvirtd  # noqa: E402
from tests.harness.vm import DiskSpec, TestVM  # noqa: E402

MiB = 1024 * 1024
EXTENT = 16 * MiB
VBBACKUP = [str(ROOT / ".venv" / "bin" / "vbbackup")]


def make_image(path: Path, size: int, data: int) -> None:
    """Data extents every other EXTENT: even ones random, odd ones compressible text."""
    count = data // EXTENT
    if 2 * count * EXTENT > size:
        raise SystemExit("--data-mib must be at most half of --size-mib")
    text = b"".join(
        b"vbbackup benchmark line %08d: the quick brown fox\n" % i for i in range(40000)
    )
    text = (text * (EXTENT // len(text) + 1))[:EXTENT]
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(count):
            f.seek(2 * EXTENT * i)
            f.write(os.urandom(EXTENT) if i % 2 == 0 else text)


def timed(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one command, which must succeed.

    The RSS comes from /usr/bin/time: a child forked from this (big) process would
    report this process's RSS at fork time as its peak.
    """
    start = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss %M", *argv], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    rss = int(done.stderr.strip().splitlines()[-1].split()[-1]) * 1024
    return elapsed, rss


def _baseline_command(rev: str, workdir: Path) -> list[str]:
    """vbbackup as of ``rev``: a detached worktree run by this venv's Python."""
    tree = workdir / f"vbbench-baseline-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree),
                        rev], check=True)  # fmt: skip
    code = "import sys; from vbbackup.cli import main; sys.exit(main())"
    return ["env", f"PYTHONPATH={tree}", str(ROOT / ".venv" / "bin" / "python"), "-c", code]


def wait_idle(vm: TestVM) -> None:
    while vm.dom is not None and vm.dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--data-mib", type=int, default=1024)
    parser.add_argument("--inc-percent", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also time vbbackup as of git revision REV (e.g. before a change), interleaved",
    )
    args = parser.parse_args()
    baseline = _baseline_command(args.baseline, args.workdir) if args.baseline else None
    size, data = args.size_mib * MiB, args.data_mib * MiB
    ensure_libvirtd()
    conn = libvirt.open(URI)
    rows: list[tuple[str, float, int, int]] = []  # name, seconds, data bytes, rss
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="vbbench-backup-") as tmp:
        work = Path(tmp)
        image = work / "source.raw"
        make_image(image, size, data)
        with TestVM(conn, [DiskSpec("vda", size, image=image)]) as vm:
            image.unlink()
            inc_bytes = int(data * args.inc_percent / 100) // (4 * MiB) * 4 * MiB

            def write_new_data(seed: int) -> None:
                # into the holes, so that the increment is exactly inc_bytes of new data
                for i in range(inc_bytes // (4 * MiB)):
                    hole = EXTENT + 2 * EXTENT * i + (seed % 4) * 4 * MiB
                    vm.write("vda", hole, os.urandom(4 * MiB))

            have_vnb = shutil.which("virtnbdbackup") is not None
            runs: dict[str, list[tuple[float, int]]] = {}

            def record(name: str, result: tuple[float, int]) -> None:
                runs.setdefault(name, []).append(result)

            def ours(level: str, out: str, *extra: str) -> tuple[float, int]:
                return timed([*VBBACKUP, level, vm.name, "-o", str(work / out), "-q", *extra])

            def theirs(level: str, out: str, *extra: str) -> tuple[float, int]:
                # virtnbdbackup refuses a domain with checkpoints of other names ("foreign")
                for foreign in vm.dom.listAllCheckpoints():
                    if not foreign.getName().startswith("virtnbdbackup."):
                        foreign.delete(0)
                sock = str(vm.dir / "vnb.sock")
                argv = ["virtnbdbackup", "-d", vm.name, "-l", level, "-o", str(work / out),
                        "-n", "-f", sock, "-S", str(vm.dir), *extra]  # fmt: skip
                result = timed(argv)
                wait_idle(vm)  # it ends its job without waiting for the end
                return result

            def fresh(out: str) -> str:
                shutil.rmtree(work / out, ignore_errors=True)
                return out

            # Interleaved repeats: the machine is shared, so each figure is a median.
            for _ in range(args.repeat):
                with pull_backup(vm) as job:
                    target = work / "nbdcopy.raw"
                    record(
                        "nbdcopy", timed(["nbdcopy", "--flush", job.nbd_uri("vda"), str(target)])
                    )
                    target.unlink()
                record("ours full", ours("full", fresh("ours")))
                record("ours full -z", ours("full", fresh("ours-lz4"), "--compress"))
                if baseline:
                    out = str(work / fresh("base"))
                    record("baseline full", timed([*baseline, "full", vm.name, "-o", out, "-q"]))
                    out = str(work / fresh("base-lz4"))
                    argv = [*baseline, "full", vm.name, "-o", out, "-q", "--compress"]
                    record("baseline full -z", timed(argv))
                if have_vnb:
                    record("vnb full", theirs("full", fresh("vnb")))
                    record("vnb full -z", theirs("full", fresh("vnb-lz4"), "-z"))
            sizes = {
                out: sum(p.stat().st_size for p in (work / out).glob("*.data"))
                for out in ("ours", "ours-lz4", "vnb", "vnb-lz4")
                if (work / out).exists()
            }
            ours("full", fresh("ours"))
            for i in range(args.repeat):
                write_new_data(i)
                record("ours inc", ours("inc", "ours"))
            if have_vnb:
                theirs("full", fresh("vnb"))
                for i in range(args.repeat):
                    write_new_data(args.repeat + i)
                    record("vnb inc", theirs("inc", "vnb"))
            labels = {
                "nbdcopy": ("nbdcopy into a file (the limit)", data),
                "ours full": ("vbbackup full", data),
                "ours full -z": ("vbbackup full --compress", data),
                "ours inc": (f"vbbackup inc ({args.inc_percent:g}% new)", inc_bytes),
                "baseline full": (f"vbbackup full as of {args.baseline}", data),
                "baseline full -z": (f"vbbackup full --compress as of {args.baseline}", data),
                "vnb full": ("virtnbdbackup full", data),
                "vnb full -z": ("virtnbdbackup full --compress", data),
                "vnb inc": (f"virtnbdbackup inc ({args.inc_percent:g}% new)", inc_bytes),
            }
            for key, (label, nbytes) in labels.items():
                if key in runs:
                    secs = statistics.median(t for t, _ in runs[key])
                    rows.append((label, secs, nbytes, max(r for _, r in runs[key])))
    conn.close()

    limit = data / rows[0][1]
    print(f"disk {args.size_mib} MiB, data {args.data_mib} MiB (half random, half text), "
          f"inc {args.inc_percent:g}%")  # fmt: skip
    print("\n| run | time | MB/s | vs nbdcopy | peak RSS |\n| --- | --- | --- | --- | --- |")
    for name, secs, nbytes, rss in rows:
        rate = nbytes / secs
        print(f"| {name} | {secs:.2f} s | {rate / 1e6:.0f} | {rate / limit:.2f}x | "
              f"{rss / 1e6:.0f} MB |")  # fmt: skip
    print("\nfiles:", ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in sizes.items()))
    times = {name: secs for name, secs, _, _ in rows}
    for plain in ("vbbackup full", "vbbackup full --compress"):
        base = times.get(f"{plain} as of {args.baseline}")
        if base:
            print(f"{plain}: {base / times[plain]:.3f}x the throughput as of {args.baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
