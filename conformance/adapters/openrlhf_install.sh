#!/usr/bin/env bash
# Minimal OpenRLHF install for the rlconform adapters in conformance/adapters/openrlhf.py.
#
# `pip install openrlhf` fails on a machine without CUDA: it requires flash-attn==2.8.3 (built
# from source with nvcc), deepspeed, ray[default], vllm and a pinned transformers. The adapter
# needs none of them: it loads openrlhf/models/utils.py, openrlhf/models/loss.py,
# openrlhf/utils/loss_utils.py and openrlhf/trainer/ppo_utils/{experience,length_penalty,
# experience_maker}.py by file path, with empty stand-ins for deepspeed and ray (as OpenRLHF's
# own tests in the wheel do). Those files import only torch and the standard library, so the
# wheel alone, without its dependencies, is the whole install. train_step
# (conformance/adapters/openrlhf_train.py) also loads models/actor.py, models/model.py,
# trainer/ray/ppo_actor.py, trainer/ray/ppo_critic.py and trainer/dpo_trainer.py, with stand-ins
# for peft and flash-attn besides; they need transformers, tqdm and numpy, which rlconform itself
# installs (OpenRLHF pins transformers==5.15.0; rlconform's range >=5.10,<6 admits it).
#
# Usage: openrlhf_install.sh [PYTHON [VERSION]]   (default: $PYTHON, else python3 on PATH), the
# Python of an environment that already has torch 2.13.0 (CPU) and rlconform; `rlconform setup
# openrlhf` runs it. VERSION defaults to the pin, conformance/adapters/pins.py (PINS["openrlhf"]).
# Note: the wheel also installs a top-level package named `tests` (OpenRLHF's test suite) into
# site-packages; rlconform's own tests/ shadows it when pytest runs from the repository root.
set -euo pipefail

PY="${1:-${PYTHON:-python3}}"
VERSION="${2:-$("$PY" -m conformance.adapters.pins openrlhf version)}"

"$PY" -m pip install --no-deps "openrlhf==$VERSION"

# Smoke test: the adapter loads OpenRLHF's files and one estimator answers.
"$PY" - <<'PY'
import torch
from conformance.adapters.openrlhf import VARIANTS, openrlhf

mask = torch.tensor([[True, True, False]])
x = torch.zeros(1, 3, dtype=torch.float64)
assert openrlhf.kl_estimate(x, x, mask, "k3").abs().max() == 0
from conformance.adapters import openrlhf_train
openrlhf_train._tfw()                # the trainer files load too (train_step)
print("openrlhf adapters ready:", ", ".join(v.name for v in VARIANTS))
PY
