#!/usr/bin/env bash
# The short runs of the --slow tier whose curves reports/comparison.md shows beside refimpl's:
# refimpl's own loops and TRL's trainers (GRPO, RLOO) on the reverse task, seed 0. Each run's
# metrics.jsonl and curves.png land under reports/runs/<adapter>/<algorithm>/. About 10 minutes
# on one core; needs .venv and .venv-trl (.ci/certify_frameworks.sh makes them).
set -euo pipefail
cd "$(dirname "$0")/.."
export RLCONFORM_RUNS_DIR="$PWD/reports/runs"
out="$(mktemp -d)"
status=0
.venv/bin/rlconform certify refimpl --slow -k '*/run-reward-rises' --out "$out" -q || status=1
.venv-trl/bin/rlconform certify trl-grpo --slow -k 'grpo/run-reward-rises' --out "$out" -q || status=1
.venv-trl/bin/rlconform certify trl-rloo --slow -k 'rloo/run-reward-rises' --out "$out" -q || status=1
exit $status
