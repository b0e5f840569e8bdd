"""What a booting guest reads through the plugin, and how the lz4 piece cache serves it.

    .venv/bin/python bench/boot_reads.py [--image ROOT.qcow2] [--data DATA.qcow2]
        [--workdir /var/tmp/vbbench-boot] [--seconds 150]

The test suite's Debian guest (tests/harness/build_guest.sh; its cached root disk is found
by default) is written as an lz4 set (512 KiB pieces, as ``vbbackup --compress`` writes),
served by our plugin behind ``nbdkit --filter=log``, and booted by QEMU (TCG) from a qcow2
overlay over the export until its console prints a login prompt. The log gives the boot's
read pattern (requests, sizes, bytes); replaying those reads in order against the same view
counts the pieces the decoded-piece cache had to decode (64 MiB budget, as nbdkit runs it).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vbbackup.chain import open_view  # noqa: E402
from vbbackup.chain.cache import DecodedCache  # noqa: E402
from vbbackup.format import StreamMeta, StreamWriter  # noqa: E402
from vbbackup.fsutil import write_sums  # noqa: E402
from vbbackup.nbdio.server import THREADS  # noqa: E402

MiB = 1024 * 1024
PLUGIN = ROOT / "nbdkit_plugin" / "vbmount.py"
READ = re.compile(r"Read id=\d+ offset=(0x[0-9a-f]+) count=(0x[0-9a-f]+)")


def guest_disk(name: str) -> Path | None:
    found = sorted(Path("/var/tmp/vbbackup-guest").glob(f"*/{name}"))
    return found[-1] if found else None


def write_set(image: Path, work: Path) -> Path:
    """The image as a one-file lz4 set (a full), with its .sums."""
    raw = work / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    mapped = json.loads(
        subprocess.run(
            ["qemu-img", "map", "--output=json", "-f", "raw", str(raw)],
            capture_output=True,
            check=True,
        ).stdout  # fmt: skip
    )
    size = raw.stat().st_size
    directory = work / "set"
    directory.mkdir()
    data = sum(e["length"] for e in mapped if e["data"])
    meta = StreamMeta(virtual_size=size, data_size=data, date="2026-12-02T04:00:00",
                      disk_name="vda", disk_format="qcow2", checkpoint_name="virtnbdbackup.0",
                      parent_checkpoint=None, incremental=False, compressed=2)  # fmt: skip
    path = directory / "vda.full.data"
    with open(raw, "rb") as src, open(path, "wb") as f:
        w = StreamWriter(f, meta)
        for e in mapped:
            if not e["data"]:
                w.write_zero(e["start"], e["length"])
                continue
            w.begin_data(e["start"], e["length"])
            src.seek(e["start"])
            left = e["length"]
            while left:
                chunk = src.read(min(4 * MiB, left))
                w.write_chunk(chunk)
                left -= len(chunk)
            w.end_data()
        w.finish()
    write_sums(path, w.sums(path.name), overwrite=True)
    (directory / "vm.cpt").write_text(json.dumps(["virtnbdbackup.0"]))
    raw.unlink()
    return directory


def boot(directory: Path, data_disk: Path | None, work: Path, seconds: float) -> float | None:
    """Boot from the export until a login prompt; seconds to it (None: not within the limit)."""
    sock, log = work / "nbd.sock", work / "nbdkit-log.txt"
    server = subprocess.Popen(
        ["nbdkit", "-f", "--exit-with-parent", f"--threads={THREADS}", "-U", str(sock),
         "--readonly", "--filter=log", "python", str(PLUGIN), f"dir={directory}",
         f"logfile={log}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    while not sock.exists():
        time.sleep(0.05)
    overlay = work / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                    f"nbd+unix:///?socket={sock}", str(overlay)], check=True)  # fmt: skip
    console = work / "console.log"
    argv = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "1024", "-nographic",
            "-display", "none", "-monitor", "none", "-serial", f"file:{console}",
            "-drive", f"file={overlay},if=virtio,format=qcow2"]  # fmt: skip
    if data_disk is not None:
        argv += ["-drive", f"file={data_disk},if=virtio,format=qcow2,snapshot=on"]
    started = time.monotonic()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    reached = None
    try:
        while time.monotonic() - started < seconds and qemu.poll() is None:
            if console.exists() and "login:" in console.read_text(errors="replace"):
                reached = time.monotonic() - started
                break
            time.sleep(0.5)
    finally:
        qemu.kill()
        qemu.wait()
        server.terminate()
        server.wait()
    return reached


def replay(directory: Path, reads: list[tuple[int, int]]) -> tuple[int, int, float]:
    """Decodes the cache made for the boot's reads in order, lookups, seconds of the replay."""
    decodes = lookups = 0
    with open_view(directory) as view:
        get = DecodedCache.get

        def counting(self: DecodedCache, key: object, make: object) -> bytes:
            nonlocal decodes, lookups
            lookups += 1

            def made() -> bytes:
                nonlocal decodes
                decodes += 1
                return make()  # type: ignore[operator, no-any-return]

            return get(self, key, made)  # type: ignore[arg-type]

        DecodedCache.get = counting  # type: ignore[assignment, method-assign]
        try:
            t = time.perf_counter()
            for offset, count in reads:
                view.read(offset, count)
            seconds = time.perf_counter() - t
        finally:
            DecodedCache.get = get  # type: ignore[method-assign]
    return decodes, lookups, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=guest_disk("root.qcow2"))
    parser.add_argument("--data", type=Path, default=guest_disk("data.qcow2"))
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/vbbench-boot"))
    parser.add_argument("--seconds", type=float, default=150.0)
    args = parser.parse_args()
    if args.image is None:
        raise SystemExit("no guest image: run the test suite once, or give --image")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    directory = write_set(args.image, args.workdir)
    to_login = boot(directory, args.data, args.workdir, args.seconds)
    log = (args.workdir / "nbdkit-log.txt").read_text(errors="replace")
    reads = [(int(o, 16), int(c, 16)) for o, c in READ.findall(log)]
    sizes = Counter(count for _, count in reads)
    decodes, lookups, seconds = replay(directory, reads)
    total = sum(count for _, count in reads)
    print(f"boot to the login prompt: {f'{to_login:.1f} s' if to_login else 'not reached'}")
    print(f"reads: {len(reads)}, {total / MiB:.1f} MiB; commonest sizes (bytes: count): "
          + ", ".join(f"{n}: {k}" for n, k in sizes.most_common(6)))  # fmt: skip
    print(f"lz4 pieces looked up: {lookups}, decoded: {decodes} "
          f"({decodes * 512 / 1024:.1f} MiB decoded for {total / MiB:.1f} MiB read; "
          f"cache hit rate {1 - decodes / max(1, lookups):.0%})")  # fmt: skip
    print(f"replaying the boot's reads in one thread: {seconds:.2f} s "
          f"({seconds / max(1, len(reads)) * 1e6:.0f} us a read)")  # fmt: skip


if __name__ == "__main__":
    main()
