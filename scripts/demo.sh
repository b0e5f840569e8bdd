#!/bin/bash
# Show the stack working end to end on a throwaway VM (removed afterwards, also on failure).
# Each step is one Python module run with .venv's interpreter; add steps below.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

# 1. A VM with live writes, a libvirt pull backup job, the disk read back over NBD.
.venv/bin/python -m tests.harness.demo

# 2. The backup engine on a VM whose disk holds a partitioned ext4 file system: full backup,
#    a file changed in the live disk, incremental backup, and a summary of what was written.
.venv/bin/python scripts/demo_backup.py
