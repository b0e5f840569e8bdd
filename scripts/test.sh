#!/bin/bash
# Lint, then the tests. Arguments go to pytest, e.g.:
#   ./scripts/test.sh -m "not integration"     the fast tier alone
#   ./scripts/test.sh tests/integration -x     the real-stack tier
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

lint_paths=()
for path in vbbackup vbmount nbdkit_plugin tests bench; do
    [ -e "$path" ] && lint_paths+=("$path")
done
.venv/bin/ruff check "${lint_paths[@]}"
.venv/bin/ruff format --check "${lint_paths[@]}"

# every package; format and chain strictly (pyproject's [tool.mypy] overrides)
.venv/bin/mypy vbbackup vbmount nbdkit_plugin

rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no test" >&2
    exit 0
fi
exit "$rc"
