#!/usr/bin/env bash
# Minimal install of skyrl-train 0.3.1's math on a CPU machine (FRAMEWORKS.md): skyrl-train
# declares Python 3.12 only (Requires-Python ==3.12.*) and pulls vLLM/SGLang-sized dependencies,
# so it goes in without its dependencies, and then only what `skyrl_train/utils/ppo_utils.py`
# (and the `training_batch.py` it imports) need. The adapter loads those two files by path,
# without running the package `__init__`s (conformance/adapters/skyrl.py).
# Usage: skyrl_install.sh [PYTHON]   (default: python3 on PATH; torch 2.13.0 already installed)
set -euo pipefail
PY="${1:-python3}"
"$PY" -m pip install --no-deps --ignore-requires-python "skyrl-train==0.3.1"
"$PY" -m pip install "ray==2.51.1" "loguru==0.7.3" "omegaconf==2.4.0" "jaxtyping==0.3.11"
"$PY" -c "from conformance.adapters.skyrl import _skyrl; _skyrl(); print('skyrl ppo_utils loads')"
