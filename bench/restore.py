"""Benchmark of ``vbbackup restore`` against the limit and against Debian's ``virtnbdrestore``.

    .venv/bin/python bench/restore.py [--workdir /var/tmp/vbbench-restore]
        [--size-mib 4096] [--data-mib 1024] [--incs 10] [--inc-percent 5] [--repeat 1]
        [--compress] [--against limit|virtnbdrestore|both]

The limit: ``qemu-img convert`` of the true final disk (a sparse raw file the
bench writes beside the sets) into the same output format, then an fsync of
the image, against ``vbbackup restore`` of the set into that format (which
ends with the image fsync'ed too): for qcow2 and raw, interleaved, median of
--repeat; every restored image is ``qemu-img compare``d with the final disk.

Two synthetic sets (written with vbbackup.format, uncompressed unless
--compress) of one disk of --size-mib with --data-mib of random data in
4 MiB extents, holes between them:
  full   the full backup alone
  chain  the same full + --incs incrementals, each rewriting --inc-percent of
         the data in 1 MiB extents at places no other incremental touches
Both tools restore each set to qcow2 in a fresh directory; the wall time of
the whole command is measured (both end with the image flushed to disk:
ours fsyncs, virtnbdrestore's qemu-nbd fdatasyncs on exit). The chain
outputs are then compared with ``qemu-img compare``. Prints a Markdown table
(docs/performance.md holds the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vbbackup.format import StreamMeta, StreamWriter  # noqa: E402
from vbbackup.fsutil import write_sums  # noqa: E402

# .sums side files as a backup writes them (--no-sums: sets as virtnbdbackup writes them)
SUMS = "--no-sums" not in sys.argv

MiB = 1024 * 1024
EXTENT = 4 * MiB
VBBACKUP = [str(ROOT / ".venv" / "bin" / "vbbackup")]
VMCONFIG = """<domain type='qemu'>
  <name>bench</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/bench.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
"""


def cp(k: int) -> str:
    return f"virtnbdbackup.{k}"


def meta(size: int, data: int, k: int, compressed: bool) -> StreamMeta:
    return StreamMeta(
        virtual_size=size,
        data_size=data,
        date="2026-11-26T07:00:00",
        disk_name="vda",
        disk_format="qcow2",
        checkpoint_name=cp(k),
        parent_checkpoint=cp(k - 1) if k else None,
        incremental=k > 0,
        compressed=2 if compressed else False,
    )


def write_full(path: Path, size: int, data: int, block: bytes, compressed: bool) -> list[int]:
    """Data extents every other EXTENT; returns their offsets."""
    starts = [2 * EXTENT * i for i in range(data // EXTENT)]
    if starts and starts[-1] + EXTENT > size:
        raise SystemExit("--data-mib must be at most half of --size-mib")
    with open(path, "wb") as f:
        w = StreamWriter(f, meta(size, len(starts) * EXTENT, 0, compressed))
        pos = 0
        for start in starts:
            if start > pos:
                w.write_zero(pos, start - pos)
            w.write_data(start, block)
            pos = start + EXTENT
        if pos < size:
            w.write_zero(pos, size - pos)
        w.finish()
    if SUMS:
        write_sums(path, w.sums(path.name), overwrite=True)
    return starts


def write_inc(
    path: Path, size: int, k: int, starts: list[int], block: bytes, compressed: bool
) -> None:
    with open(path, "wb") as f:
        w = StreamWriter(f, meta(size, len(starts) * MiB, k, compressed))
        piece = block[k * 4096 : k * 4096 + MiB]  # differs from the full's bytes there
        for start in starts:
            w.write_data(start, piece)
        w.finish()
    if SUMS:
        write_sums(path, w.sums(path.name), overwrite=True)


def make_sets(workdir: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    size, data = args.size_mib * MiB, args.data_mib * MiB
    block = os.urandom(EXTENT)
    full, chain = workdir / "full", workdir / "chain"
    for directory in (full, chain):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    starts = write_full(full / "vda.full.data", size, data, block, args.compress)
    for name in ("vda.full.data", "vda.full.data.sums"):
        if (full / name).exists():
            os.link(full / name, chain / name)
    # every 1 MiB slot of the data, handed out to the incrementals without repeats
    slots = [s + j * MiB for s in starts for j in range(EXTENT // MiB)]
    random.Random(0).shuffle(slots)
    per_inc = max(1, len(slots) * args.inc_percent // 100)
    if per_inc * args.incs > len(slots):
        raise SystemExit("--incs x --inc-percent must stay within 100%")
    final_full, final_chain = workdir / "final-full.raw", workdir / "final-chain.raw"
    with open(final_full, "wb") as f:
        f.truncate(size)
        for start in starts:
            os.pwrite(f.fileno(), block, start)
    shutil.copyfile(final_full, final_chain)  # sparse: Python copies with copy_file_range
    with open(final_chain, "r+b") as raw:
        for k in range(1, args.incs + 1):
            mine = slots[(k - 1) * per_inc : k * per_inc]
            write_inc(chain / f"vda.inc.{cp(k)}.data", size, k, sorted(mine), block, args.compress)
            for start in mine:
                os.pwrite(raw.fileno(), block[k * 4096 : k * 4096 + MiB], start)
    for directory, n in ((full, 1), (chain, args.incs + 1)):
        (directory / "bench.cpt").write_text(json.dumps([cp(k) for k in range(n)]))
        for k in range(n):
            (directory / f"vmconfig.{cp(k)}.xml").write_text(VMCONFIG)
    return full, chain


@contextmanager
def sums_hidden(backup: Path) -> Iterator[None]:
    """The set as if made without .sums files (read unchecked), for the duration."""
    moved = [p.rename(p.with_name(p.name + ".off")) for p in backup.glob("*.sums")]
    try:
        yield
    finally:
        for p in moved:
            p.rename(p.with_name(p.name[: -len(".off")]))


def timed(argv: list[str], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")
    return seconds


def ours(backup: Path, out: Path, fmt: str = "qcow2") -> list[str]:
    return [*VBBACKUP, "restore", str(backup), "-o", str(out), "--format", fmt, "--no-progress"]


def limit(final: Path, out: Path, fmt: str) -> float:
    """``qemu-img convert`` of the final disk into ``fmt``, ended with an fsync, as restore."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    image = out / f"bench.{fmt}"
    started = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, str(final), str(image)],
                   check=True)  # fmt: skip
    fd = os.open(image, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.monotonic() - started


def same_disk(final: Path, image: Path, fmt: str) -> None:
    done = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", fmt, str(final), str(image)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{image} is not the final disk: {done.stdout}{done.stderr}")


def limit_table(args: argparse.Namespace, sets: list[tuple[str, Path, Path]]) -> None:
    """The restore of each set against qemu-img convert of its final disk, per output format.

    Every repeat runs every row once (limit, then ours): a burst of load on the shared machine
    then spreads over all rows instead of spoiling one.
    """
    cases = [(lab, b, f, fmt) for lab, b, f in sets for fmt in ("qcow2", "raw")]
    runs: dict[tuple[str, str], dict[str, list[float]]] = {
        (label, fmt): {"limit": [], "ours": []} for label, _, _, fmt in cases
    }
    for _ in range(args.repeat):
        for label, backup, final, fmt in cases:
            runs[label, fmt]["limit"].append(limit(final, args.workdir / "out-limit", fmt))
            out = args.workdir / f"out-{backup.name}-{fmt}"
            runs[label, fmt]["ours"].append(timed(ours(backup, out, fmt), out))
            same_disk(final, out / f"bench.{fmt}", fmt)
    print("| set | output | qemu-img convert of the final disk (limit) | vbbackup restore "
          "| ratio |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |")
    for (label, fmt), times in runs.items():
        a, b = statistics.median(times["limit"]), statistics.median(times["ours"])
        print(f"| {label} | {fmt} | {a:.2f} s | {b:.2f} s | **{a / b:.2f}x** |")
    print()


def theirs(backup: Path, out: Path) -> list[str]:
    log = out.parent / f"{out.name}.log"
    return ["virtnbdrestore", "-i", str(backup), "-o", str(out), "-n", "-L", str(log)]


def data_written(backup: Path) -> int:
    total = 0
    for path in backup.glob("*.data"):
        with open(path, "rb") as f:
            header = f.read(40)
            total += json.loads(f.read(int(header[22:38], 16)))["dataSize"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/vbbench-restore"))
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--data-mib", type=int, default=1024)
    parser.add_argument("--incs", type=int, default=10)
    parser.add_argument("--inc-percent", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--compress", action="store_true")
    parser.add_argument("--keep", action="store_true", help="Keep the sets and outputs.")
    parser.add_argument("--no-sums", action="store_true", help="sets without .sums files")
    parser.add_argument("--against", choices=["limit", "virtnbdrestore", "both"], default="both")
    args = parser.parse_args()
    if args.against != "limit" and shutil.which("virtnbdrestore") is None:
        raise SystemExit("virtnbdrestore is not installed (apt-get install virtnbdbackup)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    full, chain = make_sets(args.workdir, args)
    os.sync()  # the sets' writeback must not land in the first measurements
    print(f"set: {args.size_mib} MiB disk, {args.data_mib} MiB data, "
          f"{'lz4' if args.compress else 'uncompressed'}; chain incs rewrite "
          f"{args.inc_percent}% each; median of {args.repeat}")  # fmt: skip
    print()
    if args.against != "virtnbdrestore":
        finals = [args.workdir / "final-full.raw", args.workdir / "final-chain.raw"]
        limit_table(args, [("full", full, finals[0]),
                           (f"full + {args.incs} incs", chain, finals[1])])  # fmt: skip
    if args.against != "limit":
        against_virtnbdrestore(args, full, chain)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


def against_virtnbdrestore(args: argparse.Namespace, full: Path, chain: Path) -> None:
    final = args.data_mib * MiB
    rows = []
    checked: list[tuple[str, float]] = []  # set, unchecked time / checked time
    for label, backup in (("full", full), (f"full + {args.incs} incs", chain)):
        runs: dict[str, list[float]] = {"vbbackup": [], "virtnbdrestore": [], "unchecked": []}
        for _ in range(args.repeat):  # interleaved: the machine is shared
            for tool, argv in (("vbbackup", ours), ("virtnbdrestore", theirs)):
                out = args.workdir / f"out-{backup.name}-{tool}"
                runs[tool].append(timed(argv(backup, out), out))
            if SUMS:  # the same restore with the .sums files moved aside: the checks' cost
                out = args.workdir / f"out-{backup.name}-unchecked"
                with sums_hidden(backup):
                    runs["unchecked"].append(timed(ours(backup, out), out))
        times = {tool: statistics.median(t) for tool, t in runs.items() if t}
        rows.append((label, data_written(backup), times))
        if SUMS:
            checked.append((label, times["unchecked"] / times["vbbackup"]))
    a = args.workdir / "out-chain-vbbackup" / "bench.qcow2"
    b = args.workdir / "out-chain-virtnbdrestore" / "bench.qcow2"
    # -U: virtnbdrestore returns while its qemu-nbd may still hold the image's lock
    compare = ["qemu-img", "compare", "-U", str(a), str(b)]
    same = subprocess.run(compare, capture_output=True, text=True, check=False)
    print("| set | data in files | vbbackup | MB/s | virtnbdrestore | MB/s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, written, t in rows:
        print(
            f"| {label} | {written / MiB:.0f} MiB | {t['vbbackup']:.2f} s "
            f"| {final / t['vbbackup'] / 1e6:.0f} | {t['virtnbdrestore']:.2f} s "
            f"| {final / t['virtnbdrestore'] / 1e6:.0f} "
            f"| {t['virtnbdrestore'] / t['vbbackup']:.2f}x |"
        )
    ratio = rows[1][2]["vbbackup"] / rows[0][2]["vbbackup"]
    print()
    verdict = "yes" if same.returncode == 0 else f"NO: {same.stdout}{same.stderr}"
    print(f"vbbackup chain / full-only: {ratio:.2f}x; chain images identical: {verdict}")
    for label, r in checked:
        print(f"{label}: restore with .sums checks at {r:.3f}x the speed of the same restore "
              "without them")  # fmt: skip


if __name__ == "__main__":
    main()
