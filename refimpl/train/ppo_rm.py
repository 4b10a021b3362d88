"""PPO against a learned reward model: the reward-hacking demonstration, in one file.

Ouyang et al., "Training language models to follow instructions with human feedback"
(InstructGPT), 2022, arXiv:2203.02155, Sec. 3.5 and Eq. 2: fit a reward model to comparisons
(Eq. 1), then optimise the policy with PPO against it, with a per-token KL penalty to the SFT
model in the reward. Gao, Schulman and Hilton, "Scaling Laws for Reward Model Overoptimization",
2022, arXiv:2210.10760: as the policy climbs the learned (proxy) reward, the true reward first
rises and then falls, the faster the weaker the KL penalty. Singhal et al., "A Long Way to Go:
Investigating Length Correlations in RLHF", 2023, arXiv:2310.03716: a reward model fitted to
length-biased labels rewards length.

The loop is ``ppo.train`` with ``reward_model`` set: it scores completions with the reward
model (``proxy_reward``), still logs the task's rule-based reward (``true_reward``) and raises
``flag_reward_hacking`` (``common.reward_hacking``) once the proxy has risen by
``common.HACK_PROXY_RISE`` while the true reward fell by ``common.HACK_TRUE_FALL``. Unless
``rm_path`` names one, the reward model is trained first with ``reward_model.train`` on the
task's pairs labelled with ``rm_bias``: with "longer" (the ``reward-hacking`` preset) the labeller prefers the
longer completion whether it is right or not, the reward model learns length, and PPO learns to
append digits: the proxy climbs while the true reward falls. With ``rm_bias=None`` (the default:
a healthy reward model, the target beats its corruptions) the flag stays silent.

Measured (reverse, seed 0, 60 PPO steps, one CPU thread; reports/training/reward-hacking and
reports/training/ppo_rm): the "longer" reward model orders 100% of held-out length-biased pairs as
its labeller does and about half of correct-vs-corrupted ones (chance); against it the proxy
reward goes -0.01 -> 2.85 while the true (strict) reward goes 0.625 -> 0 and greedy eval accuracy
0.945 -> 0.01; ``flag_reward_hacking`` fires from step 19, the first step its two 10-step windows
allow. A healthy reward model (``rm_bias=None``, 98.5% held-out pair accuracy): proxy 1.12 ->
1.31 (first vs. last step), true reward about level (0.639 -> 0.651, first vs. last 10 steps),
greedy accuracy 0.945 -> 0.905, the flag silent.

    from refimpl.train import ppo_rm; ppo_rm.train(ppo_rm.PPORMConfig(), out_dir="runs/ppo_rm")
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

from refimpl.train import ppo, reward_model
from refimpl.train.ppo import PPOConfig

__all__ = ["PPORMConfig", "train"]


@dataclass
class PPORMConfig(PPOConfig):
    algorithm: str = "ppo_rm"
    """PPO (refimpl.recipes.ppo) against a learned reward model"""
    rm_bias: str | None = None
    """the labeller of the reward model's pairs: None (the target beats its corruptions) or
    "longer" (a length-biased proxy: the reward-hacking preset)"""
    rm_steps: int = 100
    """steps of the reward model's training (when rm_path is None)"""
    rm_path: str | None = None
    """a trained sequence-classifier path to use as the reward model (so is PPOConfig's
    reward_model, if set); default: train one"""
    steps: int = 60
    """PPO steps, each on a fresh batch (measured: the proxy saturates within ~10 steps)"""
    prompts_per_step: int = 16
    """prompts per batch (group_size completions each)"""
    eval_every: int = 20
    """greedy evaluation on held-out prompts every this many steps"""
    sft_steps: int | None = 200
    """SFT steps of the warm-up: 200 on reverse leaves a policy that is already good (greedy
    0.945, sampled strict 0.665, seed 0), so that there is a true reward to lose (after the
    loops' default 100 it samples at 0.08, too low to fall by HACK_TRUE_FALL); None: the task's
    default"""


def train(cfg: PPORMConfig, out_dir=None, progress: bool | None = None) -> list[dict]:
    """Train the reward model (unless ``rm_path``) into ``out_dir/reward_model``, then PPO
    against it; returns PPO's per-step metrics (the reward model's are in
    ``out_dir/reward_model/metrics.jsonl``)."""
    given = cfg.rm_path or cfg.reward_model
    if given is not None:
        return ppo.train(dataclasses.replace(cfg, reward_model=str(given)), out_dir, progress)
    with tempfile.TemporaryDirectory(prefix="rlconform-rm-") as tmp:
        rm_dir = Path(out_dir) / "reward_model" if out_dir is not None else Path(tmp)
        rm_cfg = reward_model.RewardModelConfig(
            task=cfg.task, bias=cfg.rm_bias, steps=cfg.rm_steps, seed=cfg.seed, model=cfg.model,
            device=cfg.device, arch=cfg.arch, sft_steps=cfg.sft_steps)
        rm_rows = reward_model.train(rm_cfg, rm_dir, progress)
        final = rm_rows[-1]
        extra = cfg.extra | {"rm_eval_pair_accuracy": final["eval_pair_accuracy"],
                             "rm_strict_pair_accuracy": final["strict_pair_accuracy"]}
        run_cfg = dataclasses.replace(cfg, reward_model=str(rm_dir / "model"), extra=extra)
        return ppo.train(run_cfg, out_dir, progress)
