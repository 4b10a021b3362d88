"""Log-probabilities: ``token_logprobs`` and ``sequence_logprob``.

Equations and sources: ``refimpl/logprobs.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import torch

from conformance.checks.templates import (
    EMPTY,
    F64,
    PADDED,
    M,
    Op,
    input_check,
    mutant,
    rand_bt,
    register_op,
    sample_bt,
)
from conformance.context import Context
from conformance.registry import check
from refimpl import _checks


# --- mutants --------------------------------------------------------------------------------------
@mutant("token_logprobs", "log_softmax over the wrong axis (time instead of vocabulary)")
def logprobs_softmax_over_time(logits, tokens):
    lp = torch.log_softmax(logits, dim=1)
    return lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@mutant("sequence_logprob", "sums every entry, padding included")
def seq_logprob_reads_padding(token_logp, mask):
    _checks.bool_mask(mask, token_logp.shape)
    return token_logp.sum(dim=1)


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("token_logprobs",
       lambda c, s: ((c.randn(s.B, s.T, 5, dtype=s.dtype, scale=2.0),
                      torch.randint(0, 5, (s.B, s.T), generator=c.gen)), {}), PADDED, "BT",
       diff=(0,), mutants={"matches-reference": ("logprobs_softmax_over_time",)}))

register_op(Op("sequence_logprob", lambda c, s: ((sample_bt(c, s, 1.0, -2.0), s.mask()), {}), PADDED, "B",
       padded=(0,), diff=(0,),
       mutants={"matches-reference": ("seq_logprob_reads_padding",),
                "padding-nan": ("seq_logprob_reads_padding",)}))


# --- invalid input --------------------------------------------------------------------------------
input_check("token_logprobs/rejects-tokens-out-of-range", "tokens",
             lambda c: ((c.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64)), {}),
             lambda c: ((c.randn(2, 3, 4), torch.full((2, 3), 4, dtype=torch.int64)), {}),
             "token ids lie in [0, V)")
input_check("sequence_logprob/rejects-row-without-real-token", "mask",
             lambda c: ((rand_bt(c), M), {}), lambda c: ((rand_bt(c), EMPTY), {}),
             "a row with no real token is a ValueError")


# --- analytic checks ------------------------------------------------------------------------------
@check("token_logprobs/normalised-over-vocabulary", kind="property",
       section="log-probabilities", 
       equation="sum_v exp(token_logprobs(logits, v)) = 1 at every position",
       hint="log_softmax over the last (vocabulary) axis, then gather the token",
       mutants=("logprobs_softmax_over_time",))
def logprobs_normalised(ctx: Context):
    ctx.on("every_token_of_a_5_token_vocabulary")
    logits = ctx.randn(2, 3, 5, scale=2.0)
    total = torch.zeros(2, 3, dtype=F64)
    for v in range(5):
        out = ctx.expect_tensor(ctx.call(logits, torch.full((2, 3), v, dtype=torch.int64)), (2, 3), F64)
        total = total + out.exp()
    ctx.compare(total, torch.ones(2, 3), "sum over the vocabulary of the probabilities")
