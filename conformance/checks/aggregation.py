"""Loss aggregation: ``aggregate`` (token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-
token-sum-norm).

Equations and sources: ``refimpl/aggregation.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import torch

from conformance.checks.templates import (
    HOLE,
    PADDED,
    M,
    Op,
    input_check,
    lengths_mask,
    mutant,
    rand_bt,
    register_op,
    sample_bt,
    zero_pad,
)
from conformance.context import Context
from conformance.registry import check
from refimpl import _checks
from refimpl.aggregation import aggregate


# --- mutants --------------------------------------------------------------------------------------
@mutant("aggregate", "masks by multiplication (values * mask), so NaN at padding reaches the loss")
def aggregate_multiplies_by_mask(values, mask, mode="token-mean", norm_len=None):
    m = _checks.bool_mask(mask, values.shape)
    return _mul_agg(values, m, mode, norm_len)


def _mul_agg(values, m, mode, norm_len):
    x = values * m.to(values.dtype)
    lengths = m.sum(1).to(values.dtype)
    if mode == "token-mean":
        return x.sum() / lengths.sum()
    if mode == "seq-mean-token-mean":
        return (x.sum(1) / lengths).mean()
    if mode == "seq-mean-token-sum":
        return x.sum(1).mean()
    return x.sum() / (x.shape[0] * (x.shape[1] if norm_len is None else norm_len))


@mutant("aggregate", "token-mean divides by the padded size B*T instead of the real-token count")
def token_mean_divides_by_padded_size(values, mask, mode="token-mean", norm_len=None):
    if mode != "token-mean":
        return aggregate(values, mask, mode, norm_len)
    m = _checks.bool_mask(mask, values.shape)
    return zero_pad(values, m).sum() / values.numel()


@mutant("aggregate", "seq-mean-token-sum-norm normalises by the longest real row, not by T")
def sum_norm_uses_longest_row(values, mask, mode="token-mean", norm_len=None):
    if mode != "seq-mean-token-sum-norm" or norm_len is not None:
        return aggregate(values, mask, mode, norm_len)
    m = _checks.bool_mask(mask, values.shape)
    return aggregate(values, mask, mode, float(m.sum(1).max()))


@mutant("aggregate", "does not check that the mask is a prefix of each row")
def aggregate_accepts_holes(values, mask, mode="token-mean", norm_len=None):
    m = mask.bool()
    x = zero_pad(values, m)
    if mode == "token-mean":
        return x.sum() / m.sum()
    return aggregate(values, torch.ones_like(m), mode, norm_len)


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("aggregate", lambda c, s: ((sample_bt(c, s), s.mask()), {}), PADDED, "scalar",
       padded=(0,), diff=(0,),
       variants=({"mode": "token-mean"}, {"mode": "seq-mean-token-mean"},
                 {"mode": "seq-mean-token-sum"}, {"mode": "seq-mean-token-sum-norm"},
                 {"mode": "seq-mean-token-sum-norm", "norm_len": 16}),
       mutants={"matches-reference": ("token_mean_divides_by_padded_size",
                                      "sum_norm_uses_longest_row"),
                "padding-nan": ("aggregate_multiplies_by_mask",)}))


# --- invalid input --------------------------------------------------------------------------------
input_check("aggregate/rejects-mask-with-hole", "mask",
             lambda c: ((rand_bt(c), M), {}), lambda c: ((rand_bt(c), HOLE), {}),
             "the real tokens of a row are a prefix: a mask with a hole is a ValueError",
             ("aggregate_accepts_holes",))
input_check("aggregate/rejects-unknown-mode", "mode",
             lambda c: ((rand_bt(c), M), {"mode": "token-mean"}),
             lambda c: ((rand_bt(c), M), {"mode": "sequence-mean"}),
             "mode is one of the four aggregation modes of the contract")


# --- analytic checks ------------------------------------------------------------------------------
@check("aggregate/modes-agree-on-equal-lengths", kind="property",
       section="losses-on-tokens", 
       equation="equal lengths n: token-mean = seq-mean-token-mean = seq-mean-token-sum / n",
       hint="token-mean divides by the number of real tokens, not by B * T",
       mutants=("token_mean_divides_by_padded_size",))
def modes_agree(ctx: Context):
    mask = lengths_mask([3, 3, 3], 5)
    x = ctx.randn(3, 5)
    ctx.on("equal_lengths_with_padding")
    about = ("mode",)                       # a variant that aggregates one way only: skip
    tm = ctx.call(x, mask, "token-mean", about=about)
    ctx.compare(ctx.call(x, mask, "seq-mean-token-mean", about=about), tm,
                "seq-mean-token-mean vs token-mean")
    ctx.compare(ctx.call(x, mask, "seq-mean-token-sum", about=about) / 3, tm,
                "seq-mean-token-sum / n vs token-mean")
