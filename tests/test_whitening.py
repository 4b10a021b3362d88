"""Whitening over the whole batch (REINFORCE++, PPO): statistics over real entries only."""

import torch
from hypothesis import example, given

from tests.harness import Padded, against, assert_close, padded_batches

UNEQUAL = Padded([3, 1, 2], 4, seed=5, dtype=torch.float64)


def _oracle(a, mask, eps):
    """The definition on the real entries alone (torch.masked_select), scattered back."""
    real = torch.masked_select(a, mask)
    mu, var = real.mean(), real.var(unbiased=True)
    out = torch.zeros_like(a)
    out[mask] = (real - mu) / torch.sqrt(var + eps)
    return out


def _at_least_two(b):
    return sum(b.lengths) >= 2


@against("whiten_reads_padding", "whiten_biased_var")
@given(b=padded_batches(dtypes=(torch.float64,)))
@example(b=UNEQUAL)
def test_whitening_uses_real_entries_only(rf, b):
    if not _at_least_two(b):
        return
    a = b.randn(scale=3.0) + 1.0
    assert_close(rf.batch_normalized_advantages(a, b.mask, eps=1e-8), _oracle(a, b.mask, 1e-8), 1e-12,
          "whitened advantages vs the masked definition")


@against("whiten_biased_var")
@given(b=padded_batches(dtypes=(torch.float64,)))
@example(b=UNEQUAL)
def test_whitened_real_entries_have_zero_mean_and_unit_unbiased_variance(rf, b):
    if not _at_least_two(b):
        return
    a = b.randn(scale=2.0) - 0.5
    out = rf.batch_normalized_advantages(a, b.mask, eps=0.0)
    real = out[b.mask]
    assert_close(real.mean(), 0.0, 1e-12, "mean of whitened real entries")
    assert_close(real.var(unbiased=True), 1.0, 1e-12, "unbiased variance of whitened real entries")


@against("whiten_biased_var")
@given(b=padded_batches(dtypes=(torch.float64,), max_T=1))
def test_whitening_without_mask_treats_every_entry_as_real(rf, b):
    a = b.randn(b.B)                      # a (B,) vector of sequence-level advantages
    if a.numel() < 2:
        return
    expected = (a - a.mean()) / torch.sqrt(a.var(unbiased=True) + 1e-8)
    assert_close(rf.batch_normalized_advantages(a, None, eps=1e-8), expected, 1e-12, "mask=None")
