#!/usr/bin/env bash
# Minimal install of verl 0.9.1's math on a CPU machine (FRAMEWORKS.md): verl without its
# dependencies, then only what `verl.trainer.ppo.core_algos` imports. The full `pip install verl`
# also works but pulls 114 packages; its `[cpu]` extra pins another torch and must not be used.
# Usage: verl_install.sh [PYTHON]   (default: python3 on PATH; torch 2.13.0 already installed)
set -euo pipefail
PY="${1:-python3}"
"$PY" -m pip install --no-deps "verl==0.9.1"
"$PY" -m pip install numpy packaging ray "tensordict==0.10.0" omegaconf codetiming orjson \
    "transformers>=5.5.3,<5.11"
"$PY" -c "import verl.trainer.ppo.core_algos; print('verl core_algos imports')"
