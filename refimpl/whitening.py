"""Advantage whitening over the whole batch (global normalisation).

Sources
- REINFORCE++: Hu et al., "REINFORCE++: Stabilizing Critic-Free Policy Optimization with Global
  Normalization", 2025, arXiv:2501.03262v9 (earlier versions carry other titles), Sec. 3.1,
  Eq. 5: advantages normalised over the global batch.
- PPO implementations whiten GAE advantages per mini-batch the same way: Huang et al., "The 37
  Implementation Details of Proximal Policy Optimization", ICLR Blog Track 2022, detail 7;
  Engstrom et al., "Implementation Matters in Deep Policy Gradients", 2020, arXiv:2005.12729.

Notation
| symbol | argument   | shape        | meaning                                            |
|--------|------------|--------------|----------------------------------------------------|
| A      | advantages | any; (B, T) with a mask | advantages to whiten                    |
| m      | mask       | (B, T) or None | which entries are real (None: all of them)       |
| mu     |            | scalar       | mean of the real entries                           |
| var    |            | scalar       | unbiased variance of the real entries (divisor n-1)|

Choices the contract leaves to us, and what we chose
- ``(A - mu) * rsqrt(var + eps)``: eps inside the square root (as ``masked_whiten`` in TRL and
  verl), unbiased variance, and the mean is *not* added back (``shift_mean=True`` in those
  libraries). Padded entries are excluded from mu and var and are exactly 0 in the output.
- The reference sheet says the bias of global normalisation vanishes as the batch grows; the
  exact size of that bias for small batches is computed in ``refimpl.tabular`` and its tests.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refimpl import _checks

__all__ = ["batch_normalized_advantages"]


def batch_normalized_advantages(advantages: Tensor, mask: Tensor | None = None,
                                eps: float = 1e-8) -> Tensor:
    """Whiten ``advantages`` over the real entries of the whole batch; same shape out.

    A_hat = (A - mu) / sqrt(var + eps),   mu, var over real entries, var with divisor (n - 1).
    """
    _checks.float_tensor("advantages", advantages)
    eps = _checks.positive("eps", eps, allow_zero=True)
    if mask is None:
        m = torch.ones((), dtype=torch.bool, device=advantages.device)    # every entry is real
        n_real = advantages.numel()
    else:
        m = _checks.bool_mask(mask, advantages.shape)
        n_real = int(torch.count_nonzero(m))
    if n_real < 2:
        raise ValueError(f"advantages: whitening needs at least two real entries, got {n_real}")

    mu = torch.where(m, advantages, 0.0).sum() / n_real
    centred = torch.where(m, advantages - mu, 0.0)                   # A - mu; 0 at padding
    var = (centred * centred).sum() / (n_real - 1)                   # unbiased
    scale = torch.rsqrt(var + eps)
    if not bool(torch.isfinite(scale)):           # eps = 0, no spread: keep padding exactly 0
        return torch.where(m, centred * scale, 0.0)
    return centred * scale
