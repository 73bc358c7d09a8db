#!/usr/bin/env bash
# Set up the environment (idempotent), then run the video example on the built-in synthetic videos:
# generate the dataset, train a small video Mask2Former on the CPU, evaluate it with the YouTube-VIS
# evaluator and write an animation of its tracks, the predictions and a loss curve to the output
# directory. Extra arguments go to tools/run_video_example.py (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" tools/run_video_example.py "$@"
