"""IPO on a tiny causal LM: DPO's loop with IPO's squared loss.

Azar et al., "A General Theoretical Paradigm to Understand Learning from Human Preferences",
2023, arXiv:2310.12036, Eq. 17: the mean over pairs of

    (h - 1/(2 tau))^2,   h = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))

a regression of the log-ratio margin onto the target 1/(2 tau) rather than DPO's logistic loss,
which keeps pushing h up on deterministic preferences; tau plays the role of DPO's beta (a
larger tau, a smaller target margin, a policy closer to the reference).

The loop is ``dpo.train`` (pairs, batches, logging; it dispatches on ``algorithm``); the loss is
``refimpl.recipes.ipo``. ``beta`` and ``label_smoothing`` are unused.

Measured (reverse, defaults, one CPU thread, 29 s beside another run): greedy eval accuracy 0.425 ->
0.655 (seed 0), held-out margin 0 -> 2.5. On the earlier warm-up (greedy start 0.515, before
2026-12-01), unlike DPO's, IPO's accuracy held over a longer run (0.71 after 300 steps; DPO: 0.39).
"""

from __future__ import annotations

from dataclasses import dataclass

from refimpl.train.dpo import DPOConfig, train

__all__ = ["IPOConfig", "train"]


@dataclass
class IPOConfig(DPOConfig):
    algorithm: str = "ipo"
    """the recipe: refimpl.recipes.ipo"""
    tau: float = 0.1
    """IPO's tau: the target log-ratio margin is 1/(2 tau) (the reference sheet's typical 0.1)"""
