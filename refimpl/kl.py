"""Per-token KL estimators k1, k2, k3, and the KL-penalised (shaped) reward.

For a token y_t drawn from pi_theta, with l = log pi_theta(y_t | .) - log pi_ref(y_t | .):

    k1 = l                    E[k1] = KL(pi_theta || pi_ref)   unbiased, can be negative
    k2 = l^2 / 2              biased; E[k2] is close to KL when the policies are close
    k3 = exp(-l) - 1 + l      E[k3] = KL(pi_theta || pi_ref)   unbiased, and k3 >= 0 always

Sources
- J. Schulman, "Approximating KL Divergence", blog post, 2020 (joschu.net/blog/kl-approx.html):
  the names k1, k2, k3 and their bias and variance.
- k3 as GRPO's per-token KL term: Shao et al., DeepSeekMath, 2024, arXiv:2402.03300, Sec. 4.1, Eq. 4.
- The gradients of these estimators used as loss terms (what a trainer that adds
  ``beta * mean(k)`` to its loss actually optimises) differ from their values' expectations:
  Tang & Munos, "On a Few Pitfalls in KL Divergence Gradient Estimation for RL", 2025,
  arXiv:2506.09477; Liu, Liu, Chen, Liu, "Rethinking KL Regularization in RLHF: From Value
  Estimation to Gradient Optimization", 2025, arXiv:2510.01555. As a loss term on tokens drawn
  from pi, k1's expected gradient is 0, k2's is the per-state gradient of KL(pi || pi_ref), and
  k3's is the per-state gradient of the *forward* KL(pi_ref || pi); ``tests/test_exact_kl.py``
  verifies all three exactly on ``refimpl.tabular``.
- Reward shaping r_t = -beta * KL_t, plus the score at the last token: Ziegler et al.,
  "Fine-Tuning Language Models from Human Preferences", 2019, arXiv:1909.08593, Sec. 2
  (R = r - beta log(pi / rho)); Stiennon et al., "Learning to Summarize from Human Feedback",
  2020, arXiv:2009.01325, Sec. 3.4; REINFORCE++ (Hu et al., arXiv:2501.03262v9, Sec. 3.1, Eq. 4)
  puts the k1 penalty on every token as here.

Choices the contract leaves to us, and what we chose
- No clamping of l or of the estimate (some frameworks clamp k3 to [-10, 10]; that is their
  choice, and a conformance check shows it).
- The reference sheet's "Monte Carlo" KL is the sum of k1 over the generated tokens; summing
  ``kl_estimate(kind="k1")`` over a row's real tokens gives exactly that sequence-level estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refimpl import _checks
from refimpl.aggregation import row_lengths

__all__ = ["kl_estimate", "kl_penalized_rewards"]

_KINDS = ("k1", "k2", "k3")


def kl_estimate(logp: Tensor, ref_logp: Tensor, mask: Tensor | None = None,
                kind: str = "k3") -> Tensor:
    """Per-token sample estimate of KL(pi_theta || pi_ref), ``(B, T)``.

    l = logp - ref_logp;  k1 = l;  k2 = l**2 / 2;  k3 = exp(-l) - 1 + l.
    With a mask, padded positions are exactly 0; with ``mask=None`` every entry is computed.
    """
    _checks.float_tensor("logp", logp)
    _checks.float_tensor("ref_logp", ref_logp)
    if ref_logp.shape != logp.shape:
        raise ValueError(f"ref_logp has shape {tuple(ref_logp.shape)}, expected logp's shape "
                         f"{tuple(logp.shape)}")
    _checks.same_float_dtype(logp=logp, ref_logp=ref_logp)
    _checks.one_of("kind", kind, _KINDS)

    l = logp - ref_logp
    if mask is not None:
        l = torch.where(_checks.bool_mask(mask, logp.shape), l, 0.0)   # 0 at padding, gradient 0
    # each estimator is exactly 0 at l = 0, so padded entries come out exactly 0
    if kind == "k1":
        return l
    if kind == "k2":
        return 0.5 * (l * l)
    k3 = torch.exp(-l)
    if not k3.requires_grad:                  # nothing will differentiate it: finish in place
        return k3.sub_(1.0).add_(l)           # (two fewer full-size temporaries, same rounding)
    return k3 - 1.0 + l


def kl_penalized_rewards(scores: Tensor, logp: Tensor, ref_logp: Tensor, mask: Tensor,
                         beta: float, kind: str = "k1") -> Tensor:
    """Token rewards with a KL penalty, ``(B, T)``: the RLHF reward shaping of PPO and REINFORCE++.

    r_t = -beta * k(l_t)                  on every real token t
    r_T = -beta * k(l_T) + score          on each row's last real token T
    Padded positions are exactly 0. ``beta = 0`` is legitimate (no penalty); beta < 0 is not.
    """
    _checks.float_tensor("scores", scores, ndim=1)
    _checks.float_tensor("logp", logp, ndim=2)
    _checks.float_tensor("ref_logp", ref_logp)
    if scores.shape[0] != logp.shape[0]:
        raise ValueError(f"scores has shape {tuple(scores.shape)}, expected ({logp.shape[0]},)")
    _checks.same_float_dtype(scores=scores, logp=logp, ref_logp=ref_logp)
    beta = _checks.positive("beta", beta, allow_zero=True)
    m = _checks.bool_mask(mask, logp.shape)

    rewards = -beta * kl_estimate(logp, ref_logp, m, kind)
    last = (row_lengths(m) - 1).unsqueeze(1)                   # index of the last real token
    return rewards.scatter_add_(1, last, scores.unsqueeze(1))  # + score there (rewards is ours)
