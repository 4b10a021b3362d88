#!/usr/bin/env bash
# Regenerate the committed speed figures: benchmarks/results.{json,md,png}.
#
# Environments (made once, then reused): .venv-bench (torch's CPU build, this project, then
# `rlconform setup bench`: TRL, torchrl, Liger, skyrl-train), and .venv-verl and .venv-openrlhf
# (their pins cannot share it; the same layout .ci/certify_frameworks.sh makes). The run happens
# in .venv-bench; verl and OpenRLHF are timed in their own environments and bridged through
# refimpl's times (benchmarks/README.md). About 30-40 minutes on two cores; pass --quick (or any
# other option of `python -m benchmarks`) to change what runs.
set -euo pipefail
cd "$(dirname "$0")/.."

make_env() {   # make_env NAME SETUP_TARGET
  local venv=".venv-$1"
  if [ ! -x "$venv/bin/rlconform" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q torch==2.13.0
    "$venv/bin/pip" install -q -e ".[test]"
    "$venv/bin/rlconform" setup "$2"
  fi
}
make_env bench bench
make_env verl verl
make_env openrlhf openrlhf

out="$(mktemp -d)"
.venv-bench/bin/python -m benchmarks --out "$out" --env .venv-verl/bin/python \
  --env .venv-openrlhf/bin/python "$@"
cp "$out/results.json" "$out/results.md" "$out/results.png" benchmarks/
echo "benchmarks/results.md, results.json and results.png regenerated from $out"
