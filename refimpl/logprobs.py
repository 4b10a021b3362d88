"""Log-probabilities of sampled tokens, per token and per sequence.

Sources
- An autoregressive policy factorises over tokens: log pi(y | x) = sum_t log pi(y_t | x, y_<t)
  (the reference sheet's "Monte Carlo" KL and the DPO loss both sum these per-token terms).
  Rafailov et al., DPO, 2023, arXiv:2305.18290, Sec. 4 uses the sequence sum as log pi(y|x).

Notation
| symbol | argument   | shape     | meaning                                               |
|--------|------------|-----------|-------------------------------------------------------|
| z      | logits     | (B, T, V) | unnormalised scores of the next token at each position |
| y      | tokens     | (B, T)    | the sampled token at each position (integer ids)      |

Choices the contract leaves to us, and what we chose
- ``token_logprobs`` computes every entry (no mask): ``log_softmax`` over the vocabulary then a
  gather; the caller's mask says which entries count. Temperature scaling, if any, is the
  caller's job (divide the logits first).
- Token ids outside [0, V) are a ValueError (``gather`` would fail or read garbage).
"""

from __future__ import annotations

import torch
from torch import Tensor

from refimpl import _checks

__all__ = ["token_logprobs", "sequence_logprob"]

#: logits per block of ``token_logprobs`` (2^18 floats: 1 MiB in float32, measured fastest)
_BLOCK_ELEMENTS = 2 ** 18


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """``(B, T)``: log pi(y_t) = z[b, t, y_t] - logsumexp_v z[b, t, v], i.e.
    ``log_softmax(logits)[b, t, tokens[b, t]]``; every entry computed (no mask)."""
    _checks.float_tensor("logits", logits, ndim=3)
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    if tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens has shape {tuple(tokens.shape)}, expected logits' leading "
                         f"shape {tuple(logits.shape[:2])}")
    V = logits.shape[2]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= V):
        raise ValueError(f"tokens must lie in [0, {V}) (the vocabulary size of logits)")
    # log_softmax then gather, a block of positions at a time: the (B, T, V) log-probabilities are
    # never held whole (at B T V = 2^26, a third of the time of one log_softmax over everything)
    B, T = tokens.shape
    z, y = logits.reshape(B * T, V), tokens.reshape(B * T, 1).long()
    rows = max(1, _BLOCK_ELEMENTS // V)
    picked = [torch.log_softmax(zb, dim=-1).gather(-1, yb) for zb, yb in zip(z.split(rows), y.split(rows))]
    return torch.cat(picked).view(B, T) if picked else logits.new_zeros(B, T)


def sequence_logprob(token_logp: Tensor, mask: Tensor) -> Tensor:
    """``log pi(y) = sum_t m_t log pi(y_t | y_<t)``, ``(B,)``; padded entries never read."""
    _checks.float_tensor("token_logp", token_logp, ndim=2)
    m = _checks.bool_mask(mask, token_logp.shape)
    return torch.where(m, token_logp, torch.zeros_like(token_logp)).sum(dim=1)
