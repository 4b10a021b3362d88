#!/usr/bin/env bash
# Re-run every slow training run (tests/test_train_slow.py) and write each run's metrics.jsonl,
# config.json and curves.png here, then the summary (README.md). About 25 minutes of CPU on
# 2 cores (two runs at a time, one thread each). Models are not committed (.gitignore).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
RLCONFORM_WRITE_TRAINING=1 "$PY" -m pytest -m slow tests/test_train_slow.py -n 2 "$@"
"$PY" reports/training/summarize.py reports/training
