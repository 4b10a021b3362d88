"""Batch whitening: ``batch_normalized_advantages`` (REINFORCE++, PPO).

Equations and sources: ``refimpl/whitening.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import torch

import refimpl
from conformance.checks.templates import (
    EXACT,
    F64,
    PADDED,
    Op,
    input_check,
    lengths_mask,
    mutant,
    register_op,
    sample_bt,
    tabular_policy,
    zero_pad,
)
from conformance.context import Context
from conformance.registry import check
from refimpl import _checks
from refimpl import tabular as tab


# --- mutants --------------------------------------------------------------------------------------
@mutant("batch_normalized_advantages", "mean and variance taken over every entry, padding included")
def whiten_reads_padding(advantages, mask=None, eps=1e-8):
    if mask is None:
        return refimpl.batch_normalized_advantages(advantages, None, eps)
    m = _checks.bool_mask(mask, advantages.shape)
    mu, var = advantages.mean(), advantages.var()
    return zero_pad((advantages - mu) * torch.rsqrt(var + eps), m)


@mutant("batch_normalized_advantages", "variance with divisor n instead of n - 1")
def whiten_biased_var(advantages, mask=None, eps=1e-8):
    m = torch.ones_like(advantages, dtype=torch.bool) if mask is None else _checks.bool_mask(
        mask, advantages.shape)
    A = zero_pad(advantages, m)
    n = m.sum()
    mu = A.sum() / n
    var = zero_pad((A - mu) ** 2, m).sum() / n
    return zero_pad((A - mu) * torch.rsqrt(var + eps), m)


@mutant("batch_normalized_advantages", "whitens its input in place (advantages.sub_(mean))")
def whiten_in_place(advantages, mask=None, eps=1e-8):
    out = refimpl.batch_normalized_advantages(advantages, mask, eps)
    with torch.no_grad():
        advantages.copy_(out)
    return out


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("batch_normalized_advantages", lambda c, s: ((sample_bt(c, s, 2.0, 0.5), s.mask()), {}),
       PADDED, "BT", padded=(0,),          # advantages may be detached (contract, Gradients): no gradient
       mutants={"matches-reference": ("whiten_biased_var", "whiten_reads_padding"),
                "padding-1e30": ("whiten_reads_padding",), "padding-nan": ("whiten_reads_padding",),
                "no-input-mutation": ("whiten_in_place",)}))


# --- invalid input --------------------------------------------------------------------------------
input_check("batch_normalized_advantages/rejects-fewer-than-two-real-entries", "advantages",
             lambda c: ((c.randn(2, 2), lengths_mask([1, 1], 2)), {}),
             lambda c: ((c.randn(1, 2), lengths_mask([1], 2)), {}),
             "an unbiased variance needs at least two entries")

# --- exact checks (every outcome of refimpl.tabular enumerated) ------------------------------------


@check("batch_normalized_advantages/exact-bias-shrinks-with-batch-size", kind="exact", tol=EXACT,
       section="returns-and-advantages", source="Hu et al. 2025, arXiv:2501.03262v9, Sec. 3.1, Eq. 5 (REINFORCE++ global normalisation)",
       equation="E[grad] over every batch of N draws equals refimpl's, and |E g - grad J/sigma| "
                "shrinks strictly for N = 2..6",
       hint="whiten over the real entries of the whole batch: (A - mean) / sqrt(var + eps), var "
            "unbiased",
       mutants=("whiten_biased_var",),
       derivation="""\
A one-token bandit (2 prompts x 3 responses) drawn N times; each batch is one adapter call
with mask=None. As N grows the batch mean and std converge to E[R] and sigma (under the prompt
mixture), so the expected gradient approaches grad J / sigma; the note lists the gap per N.""")
def exact_whitening(ctx: Context):
    pol, scores = tabular_policy(max_len=1, seed=5)
    ideal = pol.ideal_normalized_gradient(scores, per_prompt=False)
    gaps = []
    for N in range(2, 7):
        ctx.on(f"every batch of {N} draws")
        tup = pol.tuples(N, same_prompt=False)
        R = scores[tup.prompt, tup.completion]
        outs = [ctx.call(R[k], None, 1e-8) for k in range(len(tup))]
        A = torch.stack([ctx.expect_tensor(o, (N,), None).detach().to(F64) for o in outs])
        ref = torch.stack([refimpl.batch_normalized_advantages(R[k], None, 1e-8) for k in range(len(tup))])
        g = -pol.expected_gradient(tab.pg_surrogate(A), tup)
        g_ref = -pol.expected_gradient(tab.pg_surrogate(ref), tup)
        ctx.compare(g, g_ref, f"E[grad] for N = {N}", dtype=outs[0].dtype)
        gaps.append(float((g - ideal).norm() / ideal.norm()))
    text = ", ".join(f"{x:.6f} (N = {n})" for n, x in zip(range(2, 7), gaps))
    ctx.require(all(b < a for a, b in zip(gaps, gaps[1:])),
                f"relative gap to grad J / sigma does not shrink with N: {text}")
    ctx.note(f"relative gap to grad J / sigma: {text}")
