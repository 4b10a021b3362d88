"""The value loss: ``value_loss`` (with value clipping).

Equations and sources: ``refimpl/value_loss.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import torch

import refimpl
from conformance.checks.templates import (
    F32,
    F64,
    PADDED,
    M,
    Op,
    agg_weights,
    input_check,
    lengths_mask,
    mutant,
    rand_bt,
    register_op,
    sample_bt,
)
from conformance.context import Context
from conformance.registry import check
from refimpl.aggregation import aggregate
from refimpl.policy_loss import _zero_padded as _token_inputs


# --- mutants --------------------------------------------------------------------------------------
@mutant("value_loss", "clipped value loss takes min instead of max")
def value_clip_min(values, old_values, returns, mask, clip=None, agg="token-mean", norm_len=None):
    m, x = _token_inputs(mask, values=values, old_values=old_values, returns=returns)
    V, Vo, R = x["values"], x["old_values"], x["returns"]
    loss = (V - R) ** 2
    if clip is not None:
        loss = torch.minimum(loss, (Vo + torch.clamp(V - Vo, -clip, clip) - R) ** 2)
    return aggregate(0.5 * loss, m, agg, norm_len)


@mutant("value_loss", "no factor 1/2: (V - R)^2")
def value_loss_no_half(values, old_values, returns, mask, clip=None, agg="token-mean",
                       norm_len=None):
    return 2 * refimpl.value_loss(values, old_values, returns, mask, clip, agg, norm_len)


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("value_loss", lambda c, s: ((sample_bt(c, s), sample_bt(c, s), sample_bt(c, s), s.mask()), {}), PADDED,
       "scalar", padded=(0, 1, 2), diff=(0,),
       variants=({}, {"clip": 0.2}, {"agg": "seq-mean-token-mean"}, {"agg": "seq-mean-token-sum"},
                 {"agg": "seq-mean-token-sum-norm"}),
       mutants={"matches-reference": ("value_clip_min", "value_loss_no_half")}))


# --- invalid input --------------------------------------------------------------------------------
input_check("value_loss/rejects-shape-mismatch", "old_values",
             lambda c: ((rand_bt(c), rand_bt(c), rand_bt(c), M), {}),
             lambda c: ((rand_bt(c), c.randn(3, 5), rand_bt(c), M), {}), "values, old_values and returns share (B, T)")


# --- analytic checks ------------------------------------------------------------------------------
@check("value_loss/gradient-zero-when-clipped", kind="gradient",
       section="losses-on-tokens", source="Engstrom et al. 2020, arXiv:2005.12729 (value clipping)",
       equation="d loss_t / d V_t = (V_t - R_t) w_t (w_t the aggregation weight), except 0 where V left [V_old - e, V_old + e] "
                "and the clipped error is the larger",
       hint="take 0.5 max((V - R)^2, (V_old + clamp(V - V_old, -e, e) - R)^2), not min",
       mutants=("value_clip_min", "value_loss_no_half"))
def value_gradient_zero_when_clipped(ctx: Context):
    mask = lengths_mask([4, 2, 3], 4)
    for dtype in (F64, F32):
        ctx.on(f"values_inside_and_outside_clip/{str(dtype)[6:]}")
        V_old, R = ctx.randn(3, 4, dtype=dtype), ctx.randn(3, 4, dtype=dtype)
        V = (V_old + ctx.uniform(-1, 1, 3, 4, dtype=dtype)).requires_grad_(True)
        args, kw = ctx.resolve((V, V_old, R, mask, 0.2, "token-mean"), {}, about=("clip",))
        (grad,) = torch.autograd.grad(ctx.call(*args, **kw), V)     # agg: one it honours
        Vd = V.detach()
        err, err_clip = (Vd - R) ** 2, (V_old + (Vd - V_old).clamp(-0.2, 0.2) - R) ** 2
        expected = torch.where(mask & ~(err_clip > err), (Vd - R) * agg_weights(mask, args[5]),
                               torch.zeros_like(Vd))
        ctx.compare(grad, expected, "d loss / d V")
