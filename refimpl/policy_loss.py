"""Policy losses on tokens: the vanilla policy gradient (REINFORCE) and PPO's clipped surrogate.

Sources
- Policy gradient: Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist
  Reinforcement Learning", Machine Learning 8, 1992; Sutton, McAllester, Singh, Mansour, "Policy
  Gradient Methods for Reinforcement Learning with Function Approximation", NeurIPS 1999, Thm. 1:
  grad J = E[ grad log pi(a|s) * A(s, a) ].
- PPO clipped surrogate: Schulman, Wolski, Dhariwal, Radford, Klimov, "Proximal Policy
  Optimization Algorithms", 2017, arXiv:1707.06347, Sec. 3, Eq. 7:
  L^CLIP = E[ min(r A, clip(r, 1 - eps, 1 + eps) A) ],  r = pi_theta / pi_old.
- Clip-higher (an upper bound 1 + eps_high wider than the lower 1 - eps_low): Yu et al., "DAPO:
  An Open-Source LLM Reinforcement Learning System at Scale", 2025, arXiv:2503.14476, Sec. 3.1
  ("Clip-Higher"; the full objective is its Eq. 8).
- Dual clip (a floor c * A on the objective when A < 0, c > 1): Ye et al., "Mastering Complex
  Control in MOBA Games with Deep Reinforcement Learning", AAAI 2020, arXiv:1912.09729, Eq. 5.

Notation
| symbol   | argument     | shape          | meaning                                         |
|----------|--------------|----------------|-------------------------------------------------|
| log pi   | logp         | (B, T)         | current policy's log-prob of each sampled token |
| log pi_old | old_logp   | (B, T)         | behaviour (rollout) policy's log-prob           |
| A        | advantages   | (B,) or (B, T) | advantage; a (B,) row value applies to all tokens |
| eps_low, eps_high | clip_low, clip_high | float | clip range [1 - eps_low, 1 + eps_high]   |
| c        | dual_clip    | float > 1      | dual-clip constant                              |

Choices the contract leaves to us, and what we chose
- Written as a loss to minimise: per token max(-A r, -A clip(r, ...)) = -min(A r, A clip(r, ...)).
- The reference sheet says the gradient becomes zero "when clipping activates"; precisely, it is
  zero only where the clipped branch is the one taken, i.e. r > 1 + eps_high with A > 0, or
  r < 1 - eps_low with A < 0. A ratio outside the range on the other side keeps its gradient
  (that is what the min/max is for). With dual clip, A < 0 and -A r > -c A, the gradient is zero
  as well.
- Advantages and old log-probs are used as given: we do not detach them (the contract leaves it
  open, and gradient checks differentiate only with respect to ``logp``).
- At padded positions logp - old_logp and a (B, T) advantage are replaced by 0 before use, and the
  per-token loss by 0 before aggregation: nothing at a padded entry reaches the value or a gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refimpl import _checks
from refimpl.aggregation import AGG_MODES, aggregate, aggregate_masked

__all__ = ["policy_gradient_loss", "ppo_clip_loss", "ppo_clip_loss_plain"]


def _token_inputs(mask: Tensor, **tensors: Tensor) -> Tensor:
    """Validate ``(B, T)`` float inputs sharing a mask (``advantages`` may be ``(B,)``); return the
    mask as bool. The mask is validated here once; the losses then call ``aggregate_masked``."""
    ref_name, ref = next(iter(tensors.items()))
    _checks.float_tensor(ref_name, ref, ndim=2)
    for name, x in tensors.items():
        _checks.float_tensor(name, x)
        if name == "advantages":
            _checks.per_row(name, x, ref.shape)
        elif x.shape != ref.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {ref_name}'s shape "
                             f"{tuple(ref.shape)}")
    _checks.same_float_dtype(**tensors)
    return _checks.bool_mask(mask, ref.shape)


def _zero_padded(mask: Tensor, **tensors: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Validate as ``_token_inputs``; return the bool mask and ``(B, T)`` copies of the tensors
    with their padded entries replaced by 0 (a ``(B,)`` advantage broadcast over its row). The
    plain formulas (``ppo_clip_loss_plain``, the conformance mutants) start from these."""
    m = _token_inputs(mask, **tensors)
    return m, {name: torch.where(m, _checks.per_row(name, x, m.shape), 0.0)
               for name, x in tensors.items()}


def _per_token(advantages: Tensor, m: Tensor) -> Tensor:
    """A ``(B,)`` advantage as a ``(B, 1)`` view (broadcast over its row's tokens, no copy); a
    ``(B, T)`` one with its padded entries replaced by 0."""
    if advantages.dim() == 1:
        return advantages.unsqueeze(1)
    return torch.where(m, advantages, 0.0)


def policy_gradient_loss(logp: Tensor, advantages: Tensor, mask: Tensor, agg: str = "token-mean",
                         norm_len: float | None = None) -> Tensor:
    """REINFORCE surrogate loss: ``aggregate(-A * logp, mask, agg, norm_len)``, a scalar.

    Its gradient is -A * grad log pi per token, aggregated; with A = R(y) and
    ``agg="seq-mean-token-sum"`` its expectation is exactly -grad J (policy-gradient theorem).
    """
    m = _token_inputs(mask, logp=logp, advantages=advantages)
    _checks.one_of("agg", agg, AGG_MODES)
    A = _per_token(advantages, m)
    if advantages.dim() == 1 and advantages.requires_grad:
        logp = torch.where(m, logp, 0.0)   # grad A = sum_t logp_t: padding must not carry a NaN
    per_token = torch.where(m, A * logp, 0.0).neg_()   # padding (even NaN) gives 0, gradient 0
    return aggregate_masked(per_token, m, agg, _norm_len(agg, norm_len))


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                  clip_low: float = 0.2, clip_high: float | None = None,
                  dual_clip: float | None = None, agg: str = "token-mean",
                  norm_len: float | None = None) -> Tensor:
    """PPO's clipped surrogate as a loss, a scalar.

    r      = exp(logp - old_logp)
    loss_t = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))         (PPO Eq. 7; DAPO Sec. 3.1)
    loss_t = min(loss_t, -c A)   where A < 0, if dual_clip = c           (dual-clip PPO)
    loss   = aggregate(loss_t, mask, agg, norm_len)

    ``clip_high`` defaults to ``clip_low``. The advantage is set to 0 at padded positions (and the
    log-ratio to 0, so r = 1 there): the per-token loss is then exactly 0 at padding with no
    further masking (``ppo_clip_loss_plain`` zero-pads every input first; tested equal).
    """
    m = _token_inputs(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    _checks.one_of("agg", agg, AGG_MODES)
    clip_low, clip_high, c = _clip_options(clip_low, clip_high, dual_clip)
    A = torch.where(m, _per_token(advantages, m), 0.0)            # (B, T), 0 at padding
    ratio = torch.where(m, logp - old_logp, 0.0).exp_()          # r; exactly 1 at padding
    per_token = -torch.minimum(A * ratio, A * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    if c is not None:                                             # Eq. 7 above, negated
        per_token = torch.where(A < 0, torch.minimum(per_token, -c * A), per_token)
    return aggregate_masked(per_token, m, agg, _norm_len(agg, norm_len))


def ppo_clip_loss_plain(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                        clip_low: float = 0.2, clip_high: float | None = None,
                        dual_clip: float | None = None, agg: str = "token-mean",
                        norm_len: float | None = None) -> Tensor:
    """``ppo_clip_loss`` written as the paper's formula (the readable reference, tested equal)."""
    m, x = _zero_padded(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    clip_low, clip_high, c = _clip_options(clip_low, clip_high, dual_clip)
    A = x["advantages"]
    ratio = torch.exp(x["logp"] - x["old_logp"])
    unclipped = -A * ratio
    clipped = -A * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)                        # Eq. 7, negated
    if c is not None:
        per_token = torch.where(A < 0, torch.minimum(per_token, -c * A), per_token)
    return aggregate(per_token, m, agg, norm_len)


def _clip_options(clip_low, clip_high, dual_clip) -> tuple[float, float, float | None]:
    clip_low = _checks.positive("clip_low", clip_low, allow_zero=True)
    clip_high = clip_low if clip_high is None else _checks.positive("clip_high", clip_high,
                                                                    allow_zero=True)
    c = None
    if dual_clip is not None:
        c = _checks.positive("dual_clip", dual_clip)
        if c <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip!r}")
    return clip_low, clip_high, c


def _norm_len(agg: str, norm_len: float | None) -> float | None:
    if agg == "seq-mean-token-sum-norm" and norm_len is not None:
        return _checks.positive("norm_len", norm_len)
    return norm_len
