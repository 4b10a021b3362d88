#!/usr/bin/env bash
# Minimal install of skyrl-train's math on a CPU machine (FRAMEWORKS.md): skyrl-train declares
# Python 3.12 only (Requires-Python ==3.12.*) and pulls vLLM/SGLang-sized dependencies, so it goes
# in without its dependencies, and then only what `skyrl_train/utils/ppo_utils.py` (and the
# `training_batch.py` it imports) need. The adapter loads those two files by path, without
# running the package `__init__`s (conformance/adapters/skyrl.py).
# Usage: skyrl_install.sh [PYTHON [VERSION]]   (default: python3 on PATH; torch 2.13.0 and
# rlconform already installed there). VERSION defaults to the pin, conformance/adapters/pins.py
# (PINS["skyrl"]); the dependencies come from pins.SCRIPT_REQUIREMENTS["skyrl"].
set -euo pipefail
PY="${1:-python3}"
pins() { "$PY" -m conformance.adapters.pins skyrl "$1"; }
VERSION="${2:-$(pins version)}"
read -ra DEPS <<< "$(pins deps)"
"$PY" -m pip install --no-deps --ignore-requires-python "skyrl-train==$VERSION"
"$PY" -m pip install "${DEPS[@]}"
"$PY" -c "from conformance.adapters.skyrl import _skyrl; _skyrl(); print('skyrl ppo_utils loads')"
