"""RLOO on a tiny causal LM: GRPO's loop with the leave-one-out baseline.

Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
Feedback in LLMs", 2024, arXiv:2402.14740, Sec. 3.2: sample k completions per prompt; each one's
baseline is the mean score of the other k - 1, so no critic and no std. The paper optimises on
policy (one epoch: the clip never binds, the loss is REINFORCE's); the KL to the reference is
subtracted from the score (Sec. 2, the RLHF reward).

The loop is ``grpo.train`` (sampling, epochs, clipping, logging); the loss is
``refimpl.recipes.rloo``. Defaults differ: one epoch, the KL in the reward, the loss summed over
each completion's tokens (the sequence log-probability of the paper), learning rate 3e-4
(measured: RLOO tolerates it on the tiny tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

from refimpl.train.grpo import GRPOConfig, train

__all__ = ["RLOOConfig", "train"]


@dataclass
class RLOOConfig(GRPOConfig):
    algorithm: str = "rloo"
    """the recipe: refimpl.recipes.rloo"""
    epochs: int = 1
    """one on-policy epoch: the REINFORCE leave-one-out estimator of the paper"""
    kl_in: str = "reward"
    """the KL is part of the reward (Ahmadian et al., Sec. 2)"""
    kl_kind: str = "k1"
    """the sequence log-ratio sum, the RLHF reward's KL"""
    agg: str = "seq-mean-token-sum"
    """REINFORCE on the sequence log-probability (a per-response token mean weights by 1/length)"""
    lr: float = 3e-4
    """Adam learning rate"""
