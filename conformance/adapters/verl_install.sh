#!/usr/bin/env bash
# Minimal install of verl's math on a CPU machine (FRAMEWORKS.md): verl without its dependencies,
# then only what `verl.trainer.ppo.core_algos` imports. The full `pip install verl` also works but
# pulls 114 packages; its `[cpu]` extra pins another torch and must not be used.
# Usage: verl_install.sh [PYTHON [VERSION]]   (default: python3 on PATH; torch 2.13.0 and rlconform
# already installed there). VERSION defaults to the pin, conformance/adapters/pins.py (PINS["verl"]);
# the dependencies come from pins.SCRIPT_REQUIREMENTS["verl"].
set -euo pipefail
PY="${1:-python3}"
pins() { "$PY" -m conformance.adapters.pins verl "$1"; }
VERSION="${2:-$(pins version)}"
read -ra DEPS <<< "$(pins deps)"
"$PY" -m pip install --no-deps "verl==$VERSION"
# keep the CPU torch already installed: a dependency that asks for torch must take this one
"$PY" -m pip install -c <(echo "torch==$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')") \
  "${DEPS[@]}"
"$PY" -c "import verl.trainer.ppo.core_algos; print('verl core_algos imports')"
