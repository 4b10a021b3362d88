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
| ppo_rm         | ppo_rm.py         | PPO against a learned reward model (biased: the reward-hacking preset) |

Every loop takes its loss from ``refimpl.recipes`` and starts from a supervised warm-up of the
task (``common.sft_policy``, cached on disk). ``run(algorithm, ...)`` is what ``rlconform train``
calls; ``PRESETS`` are the runs built to make a red flag fire.

On CPU every loop calls ``torch.set_num_threads(1)`` and leaves it so: one thread reproduces a
run bit for bit (two threads were 1.47x faster on a quiet 2-core machine, 10-18x slower under
outside load). This package imports refimpl, torch and transformers, never the conformance
harness.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import replace

from refimpl.recipes import OPTIONS

__all__ = ["LOOPS", "PRESETS", "ALGORITHMS", "config_for", "validate", "run", "train_run"]

#: algorithm -> (module, config class, fixed options of the name)
LOOPS = {
    "grpo": ("grpo", "GRPOConfig", {}),
    "dr_grpo": ("grpo", "GRPOConfig", {"algorithm": "dr_grpo", **OPTIONS["dr_grpo"]}),
    "dapo": ("grpo", "GRPOConfig", {"algorithm": "dapo", **OPTIONS["dapo"]}),
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
                     "no KL penalty and a learning rate 30x the default: the first updates carry "
                     "the policy past the 5-nat threshold from the reference (KL explosion) and "
                     "its reward falls to 0"),
    "mode-collapse": ("grpo", {"beta": 0.0, "lr": 2e-3, "reward": "partial", "steps": 100},
                      "no KL penalty, a learning rate 20x the default and a dense reward: the "
                      "policy settles on one completion per prompt (entropy and distinct "
                      "completions fall towards 0: mode collapse)"),
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


_CHOICES = {"reward": ("strict", "partial"), "kl_in": ("loss", "reward"),
            "kl_kind": ("k1", "k2", "k3"), "scale": ("group", "batch", "none"),
            "bias": (None, "longer"), "rm_bias": (None, "longer"), "arch": ("llama", "gpt2")}
_AT_LEAST_ONE = ("steps", "eval_every", "epochs", "prompts_per_step", "pairs_per_step",
                 "n_pairs", "n_eval_pairs", "grad_accum", "rm_steps")
_POSITIVE = ("lr", "critic_lr", "temperature", "max_grad_norm", "tau")
_NON_NEGATIVE = ("beta", "clip_low", "clip_high", "vf_coef", "label_smoothing")


def validate(config) -> None:
    """Refuse, before any training, a config a loop cannot run: a ValueError naming the field."""
    import torch

    from refimpl import models
    from refimpl.aggregation import AGG_MODES
    from refimpl.tasks import TASKS

    get = lambda k: getattr(config, k, None)
    if get("task") not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {get('task')!r}")
    for key, choices in _CHOICES.items():
        if hasattr(config, key) and get(key) not in choices:
            raise ValueError(f"{key} must be one of {choices}, got {get(key)!r}")
    if hasattr(config, "agg") and get("agg") not in AGG_MODES:
        raise ValueError(f"agg must be one of {AGG_MODES}, got {get('agg')!r}")
    for key in _AT_LEAST_ONE:
        if hasattr(config, key) and not (isinstance(get(key), int) and get(key) >= 1):
            raise ValueError(f"{key} must be an int >= 1, got {get(key)!r}")
    for key in _POSITIVE:
        if hasattr(config, key) and not (isinstance(get(key), (int, float)) and get(key) > 0):
            raise ValueError(f"{key} must be > 0, got {get(key)!r}")
    for key in _NON_NEGATIVE:
        if hasattr(config, key) and not (isinstance(get(key), (int, float)) and get(key) >= 0):
            raise ValueError(f"{key} must be >= 0, got {get(key)!r}")
    if get("dual_clip") is not None and not get("dual_clip") > 1:
        raise ValueError(f"dual_clip must be > 1 or None, got {get('dual_clip')!r}")
    if get("sft_steps") is not None and not (isinstance(get("sft_steps"), int)
                                             and get("sft_steps") >= 0):
        raise ValueError(f"sft_steps must be an int >= 0 or None, got {get('sft_steps')!r}")
    if hasattr(config, "group_size"):
        if not (isinstance(get("group_size"), int) and get("group_size") >= 2):
            raise ValueError(f"group_size must be an int >= 2 (a group needs a baseline), got "
                             f"{get('group_size')!r}")
        rows = get("prompts_per_step") * get("group_size")
        if rows % get("grad_accum"):
            raise ValueError(f"grad_accum must divide prompts_per_step * group_size = {rows}")
    elif hasattr(config, "pairs_per_step") and get("pairs_per_step") % get("grad_accum"):
        raise ValueError(f"grad_accum must divide pairs_per_step = {get('pairs_per_step')}")
    try:
        device = torch.device(get("device"))
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu or cuda[:N], got {get('device')!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {get('device')}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {get('device')!r}")
    if get("model") is not None:
        models.check_causal_lm(get("model"))
    for key in ("reward_model", "rm_path"):
        if get(key) is not None and not os.path.isdir(get(key)):
            raise ValueError(f"{key} must be a local directory, got {get(key)!r}")


def run(config, out_dir=None, progress: bool | None = None) -> list[dict]:
    """Train with ``config`` (from ``config_for``) by the loop of the module that defines the
    config's class; write the run to ``out_dir``."""
    return importlib.import_module(type(config).__module__).train(config, out_dir, progress)


def train_run(model_path, task, config: dict, steps: int, seed: int, out_dir=None) -> list[dict]:
    """The contract's short run (docs/contract.md, "Short runs"): refimpl's loop for
    ``config["algorithm"]`` from ``model_path`` on ``task`` (its name; the loops rebuild it from
    the seed), with the contract config's options that the loop has as fields; one metrics dict
    per step (``reward``, ``kl``, ...)."""
    algorithm = config.get("algorithm") if isinstance(config, dict) else None
    if algorithm not in LOOPS:
        raise ValueError(f"config['algorithm'] must be one of {', '.join(ALGORITHMS)}, "
                         f"got {algorithm!r}")
    fields = set(vars(config_for(algorithm)))
    options = {k: v for k, v in config.items() if k in fields and k not in ("algorithm", "model")}
    loop = config_for(algorithm, task=task.name, steps=steps, seed=seed, model=str(model_path),
                      **options)
    validate(loop)
    rows = run(loop, out_dir, progress=False)
    return [r for r in rows if "reward" in r]       # the steps (not the final evaluation row)
