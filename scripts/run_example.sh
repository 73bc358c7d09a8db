#!/usr/bin/env bash
# Set up the environment (idempotent), then run the main job on the built-in synthetic data:
# generate the dataset, train on the CPU, evaluate (PQ, AP, mIoU) and write visualisations and a
# loss curve to the output directory. Extra arguments go to tools/run_example.py (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" tools/run_example.py "$@"
