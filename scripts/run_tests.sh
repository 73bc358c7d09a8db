#!/usr/bin/env bash
# Set up the environment (idempotent) and run the test suite. Extra arguments go to pytest,
# e.g. `bash scripts/run_tests.sh -m heavy` or `bash scripts/run_tests.sh tests/test_compat.py`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# OpenMP's default busy-waiting makes two-thread tests crawl as soon as anything else wants a core.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ "$#" -eq 0 ]; then
    set -- -m "not heavy"
fi
exec "$ROOT/.venv/bin/python" -m pytest "$@"
