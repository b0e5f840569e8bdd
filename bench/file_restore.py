"""Benchmark of single-file restore: ``vbmount get`` of one file from the newest point of a
compressed chain (full + 5 incs) of an 8 GiB disk, against the anchor's way.

    .venv/bin/python bench/file_restore.py [--workdir /var/tmp/vbbench-files]
        [--size-gib 8] [--data-mib 1024] [--incs 5]

The disk (ext4 on the whole disk, --data-mib of random files) is made by mkfs -d,
a no-OS test VM runs on it (tests.harness), and ``vbbackup full --compress`` and
--incs ``inc --compress`` back it up; before each inc libguestfs changes a copy of
the image (a new version of /srv/wanted.txt and 32 MiB of other files) and the
changed blocks are written into the live disk.

Timed (wall clock, each command whole, one run on a quiet machine):
  ours     vbmount get DIR /srv/wanted.txt -o DEST   (one appliance over the served chain)
  anchor   virtnbdmap maps the chain to /dev/nbdN and replays the incs into a COW
           device, then the admin mounts it: this machine has no /dev/nbd*, so what
           can be measured is the replay to an image (virtnbdrestore 2.47) plus
           reading the file from it (guestfish: the same appliance cost as ours)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.gfs_images import changed_ranges, copy_images, edit_images  # noqa: E402
from tests.harness.libvirtd import URI, ensure_libvirtd  # noqa: E402
from tests.harness.vm import DiskSpec, TestVM  # noqa: E402
from vbbackup.gfs.appliance import backend_settings  # noqa: E402

MiB = 1024 * 1024
VBBACKUP = str(ROOT / ".venv" / "bin" / "vbbackup")
VBMOUNT = str(ROOT / ".venv" / "bin" / "vbmount")
VNB_247 = Path("/var/tmp/vnb-2.47/bin/virtnbdrestore")


def run(argv: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()[-2000:]}")
    return time.monotonic() - started


def fill(image: Path, size: int, data_mib: int, work: Path) -> dict[str, Path]:
    """ext4 made from a host directory (mkfs.ext4 -d: seconds, where writing the files
    through a TCG appliance takes minutes): --data-mib of random files."""
    tree = work / "tree"
    (tree / "bulk").mkdir(parents=True)
    (tree / "srv").mkdir()
    for i in range(data_mib // 64):
        (tree / "bulk" / f"f{i:03d}").write_bytes(os.urandom(64 * MiB))
    (tree / "srv" / "wanted.txt").write_text("version 0\n")
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "bench", "-d", str(tree), str(image)],
                   check=True)  # fmt: skip
    shutil.rmtree(tree)
    return {"vda": image}


def change(k: int) -> Any:
    def script(g: Any) -> None:
        g.mount("/dev/sda", "/")
        g.write("/srv/wanted.txt", f"version {k}\n".encode())
        g.fill_pattern(f"inc{k}", 32 * MiB, f"/bulk/inc{k}")

    return script


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/vbbench-files"))
    parser.add_argument("--size-gib", type=int, default=8)
    parser.add_argument("--data-mib", type=int, default=1024)
    parser.add_argument("--incs", type=int, default=5)
    parser.add_argument(
        "--reuse", action="store_true", help="Time the set a previous run built in --workdir again."
    )
    args = parser.parse_args()
    backup = args.workdir / "set"
    if not args.reuse:
        build(args, backup)
    measure(args, backup)


def build(args: argparse.Namespace, backup: Path) -> None:
    import libvirt

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    ensure_libvirtd()
    conn = libvirt.open(URI)
    images = fill(args.workdir / "img0" / "vda.raw", args.size_gib * 1024 * MiB,
                  args.data_mib, args.workdir)  # fmt: skip
    with TestVM(conn, [DiskSpec("vda", None, image=images["vda"])]) as vm:
        run([VBBACKUP, "full", vm.name, "-o", str(backup), "--compress", "--no-progress"])
        for k in range(1, args.incs + 1):
            new = copy_images(images, args.workdir / f"img{k}")
            edit_images(new, change(k))
            for offset, data in changed_ranges(images["vda"], new["vda"]):
                vm.write("vda", offset, data)
            shutil.rmtree(images["vda"].parent)
            images = new
            run([VBBACKUP, "inc", vm.name, "-o", str(backup), "--compress", "--no-progress"])
    conn.close()


def measure(args: argparse.Namespace, backup: Path) -> None:
    wanted = f"version {args.incs}\n"
    dest = args.workdir / "got"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(args.workdir / "replayed", ignore_errors=True)
    # a data disk (no OS to inspect): the file system is named
    ours = run([VBMOUNT, "get", str(backup), "/dev/sda:/srv/wanted.txt", "-o", str(dest)])
    assert (dest / "wanted.txt").read_text() == wanted
    anchor = None
    if VNB_247.exists():
        out = args.workdir / "replayed"
        replay = run([str(VNB_247), "-i", str(backup), "-o", str(out)])
        image = next(p for p in out.iterdir() if p.name.startswith("vda"))
        started = time.monotonic()
        env = {**os.environ, "LIBGUESTFS_BACKEND": "direct"}
        settings = backend_settings(print)
        if settings:
            env["LIBGUESTFS_BACKEND_SETTINGS"] = ",".join(settings)
        text = subprocess.run(["guestfish", "--ro", "-a", str(image), "-m", "/dev/sda",
                               "cat", "/srv/wanted.txt"], env=env,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        read = time.monotonic() - started
        assert text.strip() == wanted.strip(), text  # guestfish adds a newline
        anchor = (replay, read)
    data = sum(p.stat().st_size for p in backup.glob("*.data"))
    print(f"set: {args.size_gib} GiB disk, {args.data_mib} MiB of files, full + {args.incs} "
          f"lz4 incs, {data / MiB:.0f} MiB of data files; nproc {os.cpu_count()}")  # fmt: skip
    print("| way | seconds |")
    print("| --- | --- |")
    print(f"| vbmount get /dev/sda:/srv/wanted.txt (one appliance, TCG here) | {ours:.1f} |")
    if anchor:
        print(f"| virtnbdrestore 2.47 replay of the chain to an image | {anchor[0]:.1f} |")
        print(f"| + reading the file from it (guestfish, one appliance) | {anchor[1]:.1f} |")
        print(f"| anchor's way in all (no /dev/nbd here for virtnbdmap) | {sum(anchor):.1f} |")


if __name__ == "__main__":
    main()
