"""Losses on preference pairs: the Bradley-Terry reward-model loss, DPO and IPO.

Each takes ``(N,)`` tensors, one entry per pair (log-probabilities are whole-sequence sums, see
``refimpl.sequence_logprob``), and returns the per-pair loss ``(N,)``: no reduction, so the caller
chooses the mean.

Sources
- Bradley-Terry model: Bradley & Terry, "Rank Analysis of Incomplete Block Designs: I. The Method
  of Paired Comparisons", Biometrika 39, 1952: P(y_w > y_l) = sigmoid(r_w - r_l).
  As a reward-model loss: Ouyang et al., "Training Language Models to Follow Instructions with
  Human Feedback", 2022, arXiv:2203.02155, Sec. 3.5, Eq. 1. With a margin m(r): Touvron et al.,
  "Llama 2: Open Foundation and Fine-Tuned Chat Models", 2023, arXiv:2307.09288, Sec. 3.2.2, Eq. 2.
- DPO: Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward
  Model", NeurIPS 2023, arXiv:2305.18290, Sec. 4, Eq. 7; its gradient, Sec. 4 ("What does the DPO
  update do?"): weight beta * sigmoid(-z) on each pair.
- Label smoothing ("conservative DPO"): E. Mitchell, "A Note on DPO with Noisy Preferences &
  Relationship to IPO", 2023 (ericmitchell.ai/cdpo.pdf), Eq. 3: labels flipped with probability ls;
  the per-pair minimiser moves from z = +inf to z* = log((1 - ls) / ls).
- IPO: Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", AISTATS 2024, arXiv:2310.12036v2, Eq. 17: (h - 1/(2 tau))^2.

Notation (per pair)
| symbol | meaning                                                                   |
|--------|---------------------------------------------------------------------------|
| pc, pr | policy log-prob of the chosen / rejected response (``policy_*_logps``)    |
| rc, rr | reference log-prob of the chosen / rejected response (``ref_*_logps``)    |
| h      | (pc - rc) - (pr - rr): the implicit reward margin, without beta           |
| z      | beta * h                                                                  |

Choices the contract leaves to us, and what we chose
- ``-log sigmoid(x)`` is computed as ``softplus(-x)`` (``F.logsigmoid``), finite for any finite x.
- IPO's tau and DPO's beta must be > 0; a Bradley-Terry margin may be a float or an (N,) tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from refimpl import _checks

__all__ = ["bradley_terry_loss", "dpo_loss", "ipo_loss"]


def _pairs(**tensors: Tensor) -> None:
    first_name, first = next(iter(tensors.items()))
    for name, x in tensors.items():
        _checks.float_tensor(name, x, ndim=1)
        if x.shape != first.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {first_name}'s shape "
                             f"{tuple(first.shape)}")
    _checks.same_float_dtype(**tensors)


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor,
                       margin: float | Tensor | None = None) -> Tensor:
    """``-log sigmoid(r_c - r_r - m)`` per pair, ``(N,)`` (InstructGPT Eq. 1; Llama 2 Eq. 2).

    d loss / d r_c = sigmoid(r_c - r_r - m) - 1; at the minimum over many pairs with the same
    inputs, sigmoid(r_c - r_r) recovers the probability that the chosen response wins.
    """
    _pairs(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    delta = chosen_rewards - rejected_rewards
    if margin is not None:
        if isinstance(margin, torch.Tensor):
            _pairs(chosen_rewards=chosen_rewards, margin=margin)
        else:
            try:
                margin = float(margin)
            except (TypeError, ValueError):
                raise ValueError(f"margin must be None, a float or an (N,) tensor, "
                                 f"got {type(margin).__name__}") from None
        delta = delta - margin
    return -F.logsigmoid(delta)


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> Tensor:
    """DPO loss per pair, ``(N,)`` (Rafailov et al., Eq. 7; conservative DPO for ls > 0).

    z    = beta * ((pc - rc) - (pr - rr))
    loss = -(1 - ls) * log sigmoid(z) - ls * log sigmoid(-z)

    Limits: loss = log 2 at z = 0 and as beta -> 0; d loss / d pc = -beta * sigmoid(-z) for
    ls = 0; for 0 < ls < 1/2 the loss is minimised at z* = log((1 - ls) / ls).
    """
    _pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
           ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    beta = _checks.positive("beta", beta)
    ls = _checks.unit_interval("label_smoothing", label_smoothing)
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    z = beta * h
    if ls == 0.0:
        return -F.logsigmoid(z)                 # the same value, without the ls = 0 term
    return -(1.0 - ls) * F.logsigmoid(z) - ls * F.logsigmoid(-z)


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             ref_chosen_logps: Tensor, ref_rejected_logps: Tensor, tau: float = 0.1) -> Tensor:
    """IPO loss per pair, ``(N,)``: ``(h - 1/(2 tau))^2`` with h the log-ratio margin (Azar et
    al., Eq. 17). Minimised at h* = 1/(2 tau)."""
    _pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
           ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    tau = _checks.positive("tau", tau)
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (h - 1.0 / (2.0 * tau)) ** 2
