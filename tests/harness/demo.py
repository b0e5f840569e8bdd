"""Demo of the stack: a throwaway VM, live writes, a pull backup job, the bytes read back.

Run by scripts/demo.sh as ``.venv/bin/python -m tests.harness.demo``.
"""

from __future__ import annotations

import os
import sys

import libvirt
import nbd

from tests.harness import DiskSpec, MiB, ensure_libvirtd, pull_backup
from tests.harness.libvirtd import URI
from tests.harness.vm import TestVM


def main() -> int:
    ensure_libvirtd()
    conn = libvirt.open(URI)
    try:
        with TestVM(conn, [DiskSpec("vda", 32 * MiB)]) as vm:
            print(f"demo: started paused VM {vm.name} with a 32 MiB qcow2 disk vda")
            vm.write("vda", 0, b"vbbackup demo " + os.urandom(4082))
            vm.write_pattern("vda", 4 * MiB, 2 * MiB, 0xAB)
            vm.discard("vda", 5 * MiB, MiB)
            print("demo: wrote 4 KiB of data, 2 MiB of 0xAB and discarded 1 MiB, live")
            expected = vm.expected("vda").read_bytes()
            with pull_backup(vm, checkpoint="demo.0") as job:
                h = nbd.NBD()
                h.set_export_name(job.exports["vda"])
                h.connect_unix(str(job.socket))
                got = b"".join(h.pread(MiB, off) for off in range(0, h.get_size(), MiB))
                h.shutdown()
            print(f"demo: pull backup job exported vda at {job.socket}; read {len(got)} bytes")
            if got != expected:
                print("demo: FAILED: the backup does not match the disk", file=sys.stderr)
                return 1
            print("demo: the backup matches the disk byte for byte; checkpoint demo.0 created")
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
