"""Reducing a ``(B, T)`` per-token loss to a scalar: the four aggregation modes.

How a per-token loss is averaged decides how much each token, and each response, weighs in the
gradient. The modes differ exactly when responses differ in length.

| mode                      | formula                                    | used by                      |
|---------------------------|--------------------------------------------|------------------------------|
| token-mean                | sum_{b,t} m x / sum_{b,t} m                | DAPO (token-level loss)      |
| seq-mean-token-mean       | (1/B) sum_b [ sum_t m x / sum_t m ]        | GRPO as published            |
| seq-mean-token-sum        | (1/B) sum_b sum_t m x                      | REINFORCE on whole sequences |
| seq-mean-token-sum-norm   | sum_{b,t} m x / (B * norm_len)             | Dr. GRPO                     |

Sources
- seq-mean-token-mean: Shao et al., DeepSeekMath, 2024, arXiv:2402.03300, Sec. 4.1, Eq. 3 (the
  1/|o_i| inside the 1/G sum).
- token-mean: Yu et al., "DAPO: An Open-Source LLM Reinforcement Learning System at Scale",
  2025, arXiv:2503.14476, Sec. 3.3 (token-level policy gradient loss).
- seq-mean-token-sum-norm: Liu et al., Dr. GRPO, 2025, arXiv:2503.20783, Sec. 3.1: dividing by
  each response's own length |o_i| favours short correct and long wrong answers; a constant
  (the generation budget) removes that length bias.
- seq-mean-token-sum: the REINFORCE estimator of the sequence-level objective (Williams 1992),
  whose expected gradient is exactly -grad J (checked in ``tests/test_exact_policy_gradient.py``).

Choices the contract leaves to us, and what we chose
- ``norm_len`` defaults to ``T``, the padded width of ``values``: only this mode depends on how
  far rows are padded. Other modes ignore ``norm_len``.
- Padded entries are replaced by 0 before summing (never multiplied by the mask, so NaN or inf
  at a padded position cannot reach the result or its gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor

from refimpl import _checks

__all__ = ["aggregate", "AGG_MODES", "row_lengths"]

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate(values: Tensor, mask: Tensor, mode: str = "token-mean",
              norm_len: float | None = None) -> Tensor:
    """Reduce a ``(B, T)`` per-token quantity x over its real tokens (mask m) to a scalar.

    token-mean:               out = sum_{b,t} m x / sum_{b,t} m
    seq-mean-token-mean:      out = (1/B) sum_b (sum_t m x / sum_t m)
    seq-mean-token-sum:       out = (1/B) sum_b sum_t m x
    seq-mean-token-sum-norm:  out = sum_{b,t} m x / (B * norm_len),   norm_len defaulting to T
    """
    _checks.float_tensor("values", values, ndim=2)
    m = _checks.bool_mask(mask, values.shape)
    _checks.one_of("mode", mode, AGG_MODES)
    if mode == "seq-mean-token-sum-norm" and norm_len is not None:
        norm_len = _checks.positive("norm_len", norm_len)
    return aggregate_masked(torch.where(m, values, 0.0), m, mode, norm_len)


def aggregate_masked(x: Tensor, m: Tensor, mode: str, norm_len: float | None = None) -> Tensor:
    """``aggregate`` for arguments already checked: ``m`` a bool prefix mask, ``x`` exactly 0 at
    its padded entries. The losses call this, so a mask is validated once per call."""
    B, T = x.shape
    if mode == "token-mean":
        return x.sum() / torch.count_nonzero(m).to(x.dtype)
    if mode == "seq-mean-token-mean":
        return (x.sum(dim=1) / row_lengths(m).to(x.dtype)).mean()
    if mode == "seq-mean-token-sum":
        return x.sum(dim=1).mean()
    return x.sum() / (B * (T if norm_len is None else norm_len))


def row_lengths(m: Tensor) -> Tensor:
    """Real tokens per row of a bool prefix mask, ``(B,)`` int64: the index of each row's first
    padded entry (T for a row without padding). The same as ``m.sum(dim=1)`` for a prefix mask,
    in one pass over bytes (a bool sum widens every entry to int64 first: about 10x slower)."""
    first_padded = m.view(torch.uint8).argmin(dim=1)
    return torch.where(m[:, -1], m.shape[1], first_padded)
