"""Demo of the backup engine: full backup, a file changed in the guest, inc backup, summary.

Run by scripts/demo.sh as ``.venv/bin/python scripts/demo_backup.py``. The demo VM's
disk holds a GPT partition table and an ext4 file system with a few files; the
"change" rewrites the data block of /etc/motd in the live disk (the VM has no OS,
so the harness writes through QEMU, as a guest would), and the demo then reads
that file's bytes back from the backup chain at both checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import libvirt  # noqa: E402

from tests.harness import DiskSpec, MiB, Partition, ensure_libvirtd, make_fs_image  # noqa: E402
from tests.harness.libvirtd import URI  # noqa: E402
from tests.harness.vm import TestVM  # noqa: E402
from vbbackup.chain import open_view  # noqa: E402

VBBACKUP = str(ROOT / ".venv" / "bin" / "vbbackup")
MOTD_V1 = b"Welcome to the vbbackup demo VM. Release 1.\n"
MOTD_V2 = b"Welcome to the vbbackup demo VM. Release 2!\n"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def run(*args: str) -> str:
    print("$ " + " ".join(args).replace(str(ROOT) + "/", ""), flush=True)
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    sys.stdout.write(done.stdout)
    sys.stdout.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"demo: FAILED: {args[0]} exited with {done.returncode}")
    return done.stdout


def motd_offset(image: Path, part_offset: int, part_size: int, work: Path) -> int:
    """Byte offset of /etc/motd's data in the disk, found with debugfs on a copy of the fs."""
    fs = work / "part.img"
    with open(image, "rb") as src, open(fs, "wb") as dst:
        src.seek(part_offset)
        for _ in range(part_size // MiB):
            dst.write(src.read(MiB))
    stats = subprocess.run(["dumpe2fs", "-h", str(fs)], capture_output=True, text=True).stdout
    block_size = int(re.search(r"Block size:\s+(\d+)", stats).group(1))  # type: ignore[union-attr]
    bmap = subprocess.run(
        ["debugfs", "-R", "bmap /etc/motd 0", str(fs)], capture_output=True, text=True
    ).stdout
    fs.unlink()
    return part_offset + int(bmap.strip()) * block_size


def read_motd(directory: Path, until: str, offset: int) -> bytes:
    with open_view(directory, "vda", until) as view:
        return view.read(offset, len(MOTD_V1))


def main() -> int:
    ensure_libvirtd()
    conn = libvirt.open(URI)
    with tempfile.TemporaryDirectory(prefix="vbbackup-demo-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        image = work / "disk.raw"
        files = {
            "etc/motd": MOTD_V1,
            "etc/hostname": b"demo\n",
            "home/demo/notes.txt": b"backup early, backup often\n" * 200,
            "var/lib/app/blob.bin": os.urandom(3 * MiB),
        }
        [(offset, size)] = make_fs_image(image, 64 * MiB, [Partition(60 * MiB, "ext4", files)])
        motd = motd_offset(image, offset, size, work)
        with TestVM(conn, [DiskSpec("vda", 64 * MiB, image=image)], cdrom=True) as vm:
            say(f"VM {vm.name}: 64 MiB qcow2 disk vda (GPT, ext4 with {len(files)} files)")
            out = work / "backup"
            run(VBBACKUP, "full", vm.name, "-o", str(out), "--no-progress")
            say("the guest changes /etc/motd (one data block, written live)")
            vm.write("vda", motd, MOTD_V2)
            run(VBBACKUP, "inc", vm.name, "-o", str(out), "--no-progress", "--compress")
            say("what was written:")
            run(VBBACKUP, "info", str(out))
            names = json.loads((out / f"{vm.name}.cpt").read_text())  # vbbackup.<chain>.N
            for name in names:
                text = read_motd(out, name, motd).decode().rstrip()
                say(f"/etc/motd in the backup at {name}: {text!r}")
            if read_motd(out, names[1], motd) != MOTD_V2:
                say("FAILED: the incremental does not hold the changed file")
                return 1
            say("the incremental holds the changed file; the full still holds the old one")
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
