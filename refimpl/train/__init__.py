"""Small complete training loops on tiny causal LMs, one file per algorithm (CleanRL style).

| algorithm      | file              | what it trains                                              |
|----------------|-------------------|-------------------------------------------------------------|
| grpo           | grpo.py           | GRPO: group-normalised advantages, clipped loss, KL in loss |
| dr_grpo, dapo  | grpo.py           | the same loop with Dr. GRPO's / DAPO's options              |
| rloo           | rloo.py           | leave-one-out baseline, on-policy                           |
| reinforce_pp   | reinforce_pp.py   | KL in the token reward, batch-whitened returns              |
| ppo            | ppo.py            | PPO with a value model and GAE, KL in the reward            |
| dpo, ipo       | dpo.py, ipo.py    | offline preference optimisation against a frozen reference  |
| reward_model   | reward_model.py   | a Bradley-Terry reward model (sequence classifier)          |
| ppo_rm         | ppo_rm.py         | PPO against a learned (here: deliberately biased) reward model |

Every loop takes its loss from ``refimpl.recipes`` and starts from a supervised warm-up of the
task (``common.sft_policy``, cached on disk). ``run(algorithm, ...)`` is what ``rlconform train``
calls; ``PRESETS`` are the runs built to make a red flag fire.

This package imports refimpl, torch and transformers, never the conformance harness.
"""

from __future__ import annotations

import importlib
from dataclasses import replace

__all__ = ["LOOPS", "PRESETS", "ALGORITHMS", "config_for", "run"]

#: algorithm -> (module, config class, fixed options of the name)
LOOPS = {
    "grpo": ("grpo", "GRPOConfig", {}),
    "dr_grpo": ("grpo", "GRPOConfig", {"algorithm": "dr_grpo", "scale": "none",
                                       "agg": "seq-mean-token-sum-norm"}),
    "dapo": ("grpo", "GRPOConfig", {"algorithm": "dapo", "clip_high": 0.28, "beta": 0.0,
                                    "agg": "token-mean"}),
    "rloo": ("rloo", "RLOOConfig", {}),
    "reinforce_pp": ("reinforce_pp", "ReinforcePPConfig", {}),
    "ppo": ("ppo", "PPOConfig", {}),
    "dpo": ("dpo", "DPOConfig", {}),
    "ipo": ("ipo", "IPOConfig", {}),
    "reward_model": ("reward_model", "RewardModelConfig", {}),
    "ppo_rm": ("ppo_rm", "PPORMConfig", {}),
}
ALGORITHMS = tuple(LOOPS)

#: The runs built to make a red flag fire: preset -> (algorithm it applies to, fields, what fires).
PRESETS = {
    "kl-explosion": ("grpo", {"beta": 0.0, "lr": 3e-3, "steps": 60},
                     "no KL penalty and a learning rate 30x the default: the policy runs away "
                     "from the reference (KL explosion) and its reward falls to 0"),
    "degenerate-groups": ("grpo", {"task": "addition", "sft_steps": 150, "group_size": 2,
                                   "steps": 40},
                          "a task the warm-up barely knows, two samples per prompt: almost every "
                          "group scores all 0, so its advantages are all 0"),
    "reward-hacking": ("ppo_rm", {"rm_bias": "longer"},
                       "PPO against a reward model trained on 'longer is better' preferences: "
                       "the proxy reward rises while the task's rule-based reward falls"),
}


def _module(algorithm: str):
    if algorithm not in LOOPS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    return importlib.import_module(f"refimpl.train.{LOOPS[algorithm][0]}")


def config_for(algorithm: str, preset: str | None = None, **fields):
    """The loop's config dataclass for ``algorithm``: its defaults, the algorithm's fixed
    options, the preset's fields, then ``fields``."""
    module = _module(algorithm)
    _, class_name, fixed = LOOPS[algorithm]
    config = replace(getattr(module, class_name)(), **fixed)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        target, preset_fields, _ = PRESETS[preset]
        if target != algorithm:
            raise ValueError(f"preset {preset!r} is a {target} run, not {algorithm}")
        config = replace(config, **preset_fields, extra={"preset": preset})
    unknown = set(fields) - set(vars(config))
    if unknown:
        raise ValueError(f"{type(config).__name__} has no field {sorted(unknown)}")
    return replace(config, **fields)


def run(config, out_dir=None, progress: bool | None = None) -> list[dict]:
    """Train with ``config`` (from ``config_for``) by the loop of the module that defines the
    config's class; write the run to ``out_dir``."""
    return importlib.import_module(type(config).__module__).train(config, out_dir, progress)
