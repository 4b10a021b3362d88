"""The critic's loss, with PPO's optional value clipping.

Sources
- Squared-error value loss: Schulman et al., "Proximal Policy Optimization Algorithms", 2017,
  arXiv:1707.06347, Sec. 5, Eq. 9 (the L^VF term, (V_theta(s_t) - V_t^targ)^2).
- Value clipping: introduced in OpenAI Baselines' ``ppo2``; described and studied by Engstrom et
  al., "Implementation Matters in Deep Policy Gradients: A Case Study on PPO and TRPO", ICLR 2020,
  arXiv:2005.12729 (the first of its code-level optimisations, value function clipping):
  L^V = max[(V_theta - V_targ)^2, (clip(V_theta, V_old - eps, V_old + eps) - V_targ)^2].

Notation
| symbol  | argument   | shape  | meaning                                                 |
|---------|------------|--------|---------------------------------------------------------|
| V       | values     | (B, T) | current critic's predictions                            |
| V_old   | old_values | (B, T) | the critic's predictions when the batch was collected   |
| R       | returns    | (B, T) | regression targets (e.g. GAE returns)                   |
| e       | clip       | float  | value clip range (None: no clipping)                    |

Choices the contract leaves to us, and what we chose
- The factor 0.5 is part of the loss (as in TRL, verl and OpenRLHF), so d loss / d V = V - R
  per token before aggregation.
- Clipping takes the *max* of the two squared errors (pessimistic, as Baselines): the gradient
  is zero exactly where the clipped prediction is further from R than the unclipped one and
  V has left [V_old - e, V_old + e].
"""

from __future__ import annotations

import torch
from torch import Tensor

from refimpl import _checks
from refimpl.aggregation import AGG_MODES, aggregate_masked
from refimpl.policy_loss import _norm_len, _token_inputs

__all__ = ["value_loss"]


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip: float | None = None, agg: str = "token-mean",
               norm_len: float | None = None) -> Tensor:
    """``aggregate(0.5 (V - R)^2)``; with ``clip=e``:
    ``aggregate(0.5 max((V - R)^2, (V_old + clamp(V - V_old, -e, e) - R)^2))``. A scalar."""
    m = _token_inputs(mask, values=values, old_values=old_values, returns=returns)
    _checks.one_of("agg", agg, AGG_MODES)
    V, R = torch.where(m, values, 0.0), torch.where(m, returns, 0.0)    # padding: 0, gradient 0
    loss = (V - R) ** 2                                                  # PPO Eq. 9
    if clip is not None:
        e = _checks.positive("clip", clip, allow_zero=True)
        V_old = torch.where(m, old_values, 0.0)
        V_clipped = V_old + torch.clamp(V - V_old, -e, e)
        loss = torch.maximum(loss, (V_clipped - R) ** 2)                 # Engstrom et al. 2020
    return aggregate_masked(0.5 * loss, m, agg, _norm_len(agg, norm_len))
