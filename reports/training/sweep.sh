#!/usr/bin/env bash
# The hyperparameter sweep of docs/sheet.md ("Hyperparameter cheat sheet"): one reference loop per
# value, each under 60 s on one CPU thread, on the reverse task, seed 0. One knob moves per run;
# the others keep the loop's defaults, except a batch of 16 prompts (128 completions; the group-size
# runs keep 128 completions a step: 64 prompts of 2 ... 8 of 16). Each run writes metrics.jsonl, config.json and curves.png to
# reports/training/sweep/<knob>-<value>/ (models are not committed). The sheet reads these files; it
# never re-runs or re-times them. About 10 minutes of CPU (RUNS=2 runs two at a time).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=reports/training/sweep
GRPO_STEPS=60      # 16 prompts x 8 samples a step: ~0.6 s a step, ~40 s a run
PPO_STEPS=40       # the same batch with a critic and GAE: ~1 s a step
B=prompts_per_step=16
run() {            # name algorithm steps [FIELD=VALUE ...]
    local name=$1 algo=$2 steps=$3; shift 3
    local sets=(); for kv in "$@"; do sets+=(--set "$kv"); done
    rm -rf "$OUT/$name"
    "$PY" -m conformance.cli train "$algo" --out "$OUT/$name" --steps "$steps" --seed 0 -q \
        ${sets[@]+"${sets[@]}"} >/dev/null
    rm -rf "$OUT/$name/model"
    echo "$name"
}
jobs_=(
  "grpo-default grpo $GRPO_STEPS $B"
  "clip-0.05 grpo $GRPO_STEPS $B clip_low=0.05 clip_high=0.05"
  "clip-0.5 grpo $GRPO_STEPS $B clip_low=0.5 clip_high=0.5"
  "beta-0 grpo $GRPO_STEPS $B beta=0"
  "beta-0.4 grpo $GRPO_STEPS $B beta=0.4"
  "group-2 grpo $GRPO_STEPS group_size=2 prompts_per_step=64"
  "group-4 grpo $GRPO_STEPS group_size=4 prompts_per_step=32"
  "group-16 grpo $GRPO_STEPS group_size=16 prompts_per_step=8"
  "temperature-0.7 grpo $GRPO_STEPS $B temperature=0.7"
  "temperature-1.3 grpo $GRPO_STEPS $B temperature=1.3"
  "lam-0 ppo $PPO_STEPS $B lam=0"
  "lam-0.95 ppo $PPO_STEPS $B"
  "lam-1 ppo $PPO_STEPS $B lam=1"
)
export -f run; export PY OUT B
printf '%s\n' "${jobs_[@]}" | xargs -P "${RUNS:-1}" -I{} bash -c 'run {}'
