"""Benchmark of the chain view and the vbmount nbdkit plugin.

    .venv/bin/python bench/plugin.py [--workdir /var/tmp/vbbench] [--size-mib 1024]

Measures, on synthetic backup sets written with vbbackup.format:
  1. sequential read of the whole served disk (``nbdcopy ... null:``):
     plugin on an uncompressed set, plugin on the lz4 set, and ``nbdkit file``
     on the same disk as a sparse raw file (the limit);
  2. random 4 KiB reads per second over several connections, plugin vs file;
  3. open time (to the first byte through nbdkit) and RSS for a chain of
     1 full + 30 incrementals holding 1,000,000 extents in total.
Prints a Markdown table (docs/performance.md holds the figures).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nbd  # noqa: E402

from vbbackup.chain import open_view  # noqa: E402
from vbbackup.format import StreamMeta, StreamWriter  # noqa: E402
from vbbackup.fsutil import write_sums  # noqa: E402
from vbbackup.nbdio.server import THREADS  # noqa: E402

# .sums side files as a backup writes them (--no-sums: sets as virtnbdbackup writes them)
SUMS = "--no-sums" not in sys.argv

PLUGIN = ROOT / "nbdkit_plugin" / "vbmount.py"
MiB = 1024 * 1024
KiB = 1024


def meta(size: int, k: int, compressed: bool, data_size: int = 0) -> StreamMeta:
    return StreamMeta(
        virtual_size=size,
        data_size=data_size,
        date="2026-11-26T07:00:00",
        disk_name="vda",
        disk_format="qcow2",
        checkpoint_name=f"virtnbdbackup.{k}",
        parent_checkpoint=f"virtnbdbackup.{k - 1}" if k else None,
        incremental=k > 0,
        compressed=2 if compressed else False,
    )


def stream_path(directory: Path, k: int) -> Path:
    return directory / ("vda.full.data" if k == 0 else f"vda.inc.virtnbdbackup.{k}.data")


def write_cpt(directory: Path, n: int) -> None:
    names = [f"virtnbdbackup.{k}" for k in range(n)]
    (directory / "vm.cpt").write_text(json.dumps(names))


def block(rng: random.Random, n: int) -> bytes:
    """Half random, half a repeated byte: compresses about 2:1 like a real disk."""
    half = n // 2
    return rng.randbytes(half) + bytes([rng.randrange(256)]) * (n - half)


def layout(rng: random.Random, size: int, fill: float) -> list[tuple[int, int]]:
    """Data extents of 64 KiB..4 MiB covering about ``fill`` of the disk."""
    out = []
    pos = 0
    while pos < size:
        n = min(rng.choice([64, 256, 1024, 4096]) * KiB, size - pos)
        if rng.random() < fill:
            out.append((pos, n))
        pos += n
    return out


def write_full(path: Path, size: int, extents: list[tuple[int, int]], k: int, z: bool) -> None:
    rng = random.Random(k)
    with open(path, "wb") as f:
        w = StreamWriter(f, meta(size, k, z, sum(n for _, n in extents)))
        pos = 0
        for start, n in extents:
            if start > pos and k == 0:
                w.write_zero(pos, start - pos)
            w.begin_data(start, n)
            for off in range(0, n, 4 * MiB):
                w.write_chunk(block(rng, min(4 * MiB, n - off)))
            w.end_data()
            pos = start + n
        if pos < size and k == 0:
            w.write_zero(pos, size - pos)
        w.finish()
    if SUMS:
        write_sums(path, w.sums(path.name), overwrite=True)


def make_sets(work: Path, size: int) -> tuple[Path, Path, Path]:
    """Full + 3 incrementals, plain and lz4, and the last point as a sparse raw file."""
    plain, lz4 = work / "plain", work / "lz4"
    rng = random.Random(1)
    steps = [layout(rng, size, 0.375)] + [layout(rng, size, 0.03) for _ in range(3)]
    for directory, z in ((plain, False), (lz4, True)):
        directory.mkdir(parents=True, exist_ok=True)
        for k, extents in enumerate(steps):
            write_full(stream_path(directory, k), size, extents, k, z)
        write_cpt(directory, len(steps))
    raw = work / "disk.raw"
    with open_view(plain) as view, open(raw, "wb") as f:
        f.truncate(view.size)
        for off, n, zero in view.extents(0, view.size):
            for pos in range(off, off + n, 8 * MiB) if not zero else ():
                f.seek(pos)
                f.write(view.read(pos, min(8 * MiB, off + n - pos)))
    return plain, lz4, raw


def plugin_cmd(directory: Path) -> list[str]:
    """The plugin as vbbackup and vbmount start it (their --threads)."""
    return ["nbdkit", f"--threads={THREADS}", "python", str(PLUGIN), f"dir={directory}"]


def null_plugin_cmd(work: Path, size: int) -> list[str]:
    """The ceiling of any Python plugin: nbdkit's binding and the GIL, no work per read."""
    path = work / "null_plugin.py"
    path.write_text(
        "import nbdkit\nAPI_VERSION = 2\n"
        "def thread_model():\n    return nbdkit.THREAD_MODEL_PARALLEL\n"
        "def open(readonly):\n    return 1\n"
        f"def get_size(h):\n    return {size}\n"
        "def pread(h, buf, offset, flags):\n    pass\n"
    )
    return ["nbdkit", f"--threads={THREADS}", "python", str(path)]


def file_cmd(raw: Path) -> list[str]:
    return ["nbdkit", f"--threads={THREADS}", "file", str(raw)]


def nbdcopy_seconds(server: list[str], runs: int = 3) -> float:
    """Best of ``runs`` whole-disk copies to null: (page cache warm)."""
    best = float("inf")
    argv = ["nbdcopy", "--", "[", server[0], "--exit-with-parent", *server[1:], "]", "null:"]
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, check=True)
        best = min(best, time.perf_counter() - t)
    return best


def startup_seconds(server: list[str]) -> float:
    """Best of three: nbdkit start, open, answer one request, exit."""
    argv = [server[0], "-U", "-", *server[1:], "--run", 'nbdinfo --size "$uri"']
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


@contextmanager
def served(server: list[str]) -> Iterator[tuple[str, int]]:
    """nbdkit on a private unix socket; yields (socket, pid) once it listens."""
    with tempfile.TemporaryDirectory(prefix="vbbench-") as tmp:
        sock, pidfile = f"{tmp}/nbd.sock", Path(tmp) / "pid"
        argv = [server[0], "-U", sock, "-P", str(pidfile), "--exit-with-parent", "-f"]
        with subprocess.Popen([*argv, *server[1:]]) as proc:
            try:
                while not pidfile.exists() or not pidfile.read_text().strip():
                    if proc.poll() is not None:
                        raise RuntimeError(f"nbdkit exited {proc.returncode}")
                    time.sleep(0.01)
                yield sock, int(pidfile.read_text())
            finally:
                proc.terminate()
                proc.wait()


def random_reads_per_second(server: list[str], size: int, conns: int, seconds: float) -> float:
    """4 KiB reads at random 4 KiB-aligned offsets, one thread per connection."""
    counts = [0] * conns
    with served(server) as (sock, _):

        def worker(i: int) -> None:
            h = nbd.NBD()
            h.connect_unix(sock)
            rng = random.Random(i)
            blocks = size // 4096
            deadline = time.perf_counter() + seconds
            n = 0
            while time.perf_counter() < deadline:
                for _ in range(64):
                    h.pread(4096, rng.randrange(blocks) * 4096)
                n += 64
            counts[i] = n
            h.shutdown()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return sum(counts) / seconds


def make_big_chain(directory: Path, n_incs: int = 30, total: int = 1_000_000) -> int:
    """1 full + ``n_incs`` incrementals holding ``total`` frames (512 B data, zero)."""
    directory.mkdir(parents=True, exist_ok=True)
    full_frames = total // 2
    size = full_frames * 4096
    sector = bytes(range(256)) * 2
    with open(stream_path(directory, 0), "wb") as f:
        w = StreamWriter(f, meta(size, 0, False, full_frames // 2 * 512))
        for i in range(full_frames // 2):
            w.write_data(i * 8192, sector)
            w.write_zero(i * 8192 + 512, 8192 - 512)
        w.finish()
    if SUMS:
        write_sums(
            stream_path(directory, 0), w.sums(stream_path(directory, 0).name), overwrite=True
        )
    per_inc = (total - full_frames) // n_incs
    rng = random.Random(2)
    for k in range(1, n_incs + 1):
        starts = sorted(rng.sample(range(size // 4096), per_inc))
        with open(stream_path(directory, k), "wb") as f:
            w = StreamWriter(f, meta(size, k, False))
            for j, blk in enumerate(starts):
                if j % 8 == 7:
                    w.write_zero(blk * 4096, 4096)
                else:
                    w.write_data(blk * 4096, sector)
            w.finish()
        if SUMS:
            write_sums(stream_path(directory, k), w.sums(stream_path(directory, k).name),
                       overwrite=True)  # fmt: skip
    write_cpt(directory, n_incs + 1)
    return size


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def first_byte(directory: Path) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """Best of three: seconds from starting nbdkit to the first byte read, and RSS."""
    return min(_first_byte(directory) for _ in range(3))


def _first_byte(directory: Path) -> tuple[float, tuple[int, int], tuple[int, int]]:
    t = time.perf_counter()
    with served(plugin_cmd(directory)) as (sock, pid):
        h = nbd.NBD()
        h.connect_unix(sock)
        h.pread(512, 0)
        elapsed = time.perf_counter() - t
        after_open = rss_kib(pid)
        h.pread(4096, h.get_size() - 4096)
        h.shutdown()
        return elapsed, after_open, rss_kib(pid)


def in_process_open(directory: Path) -> tuple[float, int]:
    """Best of three: open_view time and the RSS it adds, in a fresh interpreter."""
    return min(_in_process_open(directory) for _ in range(3))


def _in_process_open(directory: Path) -> tuple[float, int]:
    code = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from vbbackup.chain import open_view
def rss():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS"))
before = rss()
t = time.perf_counter()
view = open_view({str(directory)!r})
view.read(0, 512)
first = time.perf_counter() - t
view.extents(0, view.size)  # every region of the map built
print(first, rss() - before, len(view.map), time.perf_counter() - t)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, added, segs, whole = out.stdout.split()
    print(f"  in-process: first byte {float(seconds):.2f} s, whole map {float(whole):.2f} s, "
          f"+{int(added) // 1024} MiB, {segs} segments")  # fmt: skip
    return float(seconds), int(added)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/vbbench"))
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--conns", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--only", choices=["seq", "random", "chain"], action="append")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--no-sums", action="store_true", help="sets without .sums files")
    args = parser.parse_args()
    only = set(args.only or ["seq", "random", "chain"])
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    try:
        if only & {"seq", "random"}:
            size = args.size_mib * MiB
            t = time.perf_counter()
            plain, lz4, raw = make_sets(work, size)
            print(f"sets written in {time.perf_counter() - t:.1f} s", flush=True)
            data = sum(n for _, n, z in open_view(plain).extents(0, size) if not z)
            what = f"{args.size_mib} MiB disk, {data // MiB} MiB data, full + 3 inc"
            if "seq" in only:
                up = startup_seconds(plugin_cmd(plain))
                rows.append(("vbmount plugin start-up on this set (nbdinfo --size)", f"{up:.2f} s"))
                f_s = nbdcopy_seconds(file_cmd(raw))
                p_s = nbdcopy_seconds(plugin_cmd(plain))
                z_s = nbdcopy_seconds(plugin_cmd(lz4))
                rows += [
                    (f"nbdcopy to null:, nbdkit file ({what})", f"{f_s:.2f} s"),
                    ("nbdcopy to null:, vbmount plugin, uncompressed set",
                     f"{p_s:.2f} s ({f_s / p_s:.2f}x file)"),
                    ("nbdcopy to null:, vbmount plugin, lz4 set",
                     f"{z_s:.2f} s ({f_s / z_s:.2f}x file)"),
                ]  # fmt: skip
            if "random" in only:
                c = args.conns
                f_r = random_reads_per_second(file_cmd(raw), size, c, args.seconds)
                p_r = random_reads_per_second(plugin_cmd(plain), size, c, args.seconds)
                z_r = random_reads_per_second(plugin_cmd(lz4), size, c, args.seconds)
                n_r = random_reads_per_second(null_plugin_cmd(work, size), size, c, args.seconds)
                rows += [
                    (f"random 4 KiB reads/s, {c} connections, nbdkit file", f"{f_r:,.0f}"),
                    ("random 4 KiB reads/s, vbmount plugin, uncompressed",
                     f"{p_r:,.0f} ({p_r / f_r:.2f}x file)"),
                    ("random 4 KiB reads/s, vbmount plugin, lz4",
                     f"{z_r:,.0f} ({z_r / f_r:.2f}x file)"),
                    ("random 4 KiB reads/s, a Python plugin whose pread does nothing",
                     f"{n_r:,.0f} ({n_r / f_r:.2f}x file: nbdkit's Python binding alone)"),
                ]  # fmt: skip
        if "chain" in only:
            big = work / "chain1m"
            t = time.perf_counter()
            make_big_chain(big)
            print(f"1M-extent chain written in {time.perf_counter() - t:.1f} s", flush=True)
            seconds, added = in_process_open(big)
            ttfb, (rss, hwm), (rss2, _) = first_byte(big)
            rows += [
                ("1 full + 30 inc, 1,000,000 extents: open_view in process",
                 f"{seconds:.2f} s, +{added // 1024} MiB RSS"),
                ("same chain: nbdkit start to first byte", f"{ttfb:.2f} s"),
                ("same chain: nbdkit RSS after first byte (peak)",
                 f"{rss // 1024} MiB ({hwm // 1024} MiB)"),
            ]  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| measurement | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
