"""Token and sequence log-probabilities: log_softmax over the vocabulary, checked against a
hand-written logsumexp and against normalisation; sequence sums that never read padding."""

import math

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tests.harness import Padded, against, assert_close, fill_padding, padded_batches

UNEQUAL = Padded([3, 1, 2], 4, seed=13, dtype=torch.float64)


@st.composite
def logit_batches(draw):
    B, T, V = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(2, 7))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    gen = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, V, (B, T), generator=gen)
    return logits, tokens


def _log_prob_loop(logits, tokens):
    """logits[b, t, y] - log sum_v exp(logits[b, t, v]), one position at a time in plain Python
    (the sum shifted by the row maximum so that it neither overflows nor underflows)."""
    B, T, V = logits.shape
    out = torch.empty(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            row = [float(x) for x in logits[b, t]]
            top = max(row)
            lse = top + math.log(math.fsum(math.exp(x - top) for x in row))
            out[b, t] = row[int(tokens[b, t])] - lse
    return out


@against("logprobs_softmax_over_time")
@given(batch=logit_batches())
@example(batch=(torch.tensor([[[0.0, 1.0, -2.0], [3.0, 0.5, 0.5]]], dtype=torch.float64),
                torch.tensor([[1, 0]])))
def test_token_logprobs_are_logit_minus_logsumexp_over_vocabulary(rf, batch):
    logits, tokens = batch
    # float64, V <= 7 terms, logits <= ~50 in size: a few ulps of 50; tolerance 1e-12
    assert_close(rf.token_logprobs(logits, tokens), _log_prob_loop(logits, tokens), 1e-12,
          "token_logprobs vs logits[y] - logsumexp over the vocabulary")


@against("logprobs_softmax_over_time")
@given(batch=logit_batches())
@example(batch=(torch.tensor([[[0.0, 1.0, -2.0]]], dtype=torch.float64), torch.tensor([[2]])))
def test_token_probabilities_over_the_vocabulary_sum_to_one(rf, batch):
    logits, _ = batch
    B, T, V = logits.shape
    # ask for every possible token at every position, one vocabulary entry at a time
    probs = torch.stack([rf.token_logprobs(logits, torch.full((B, T), v)).exp() for v in range(V)])
    # a sum of V <= 7 probabilities in float64: a few ulps; tolerance 1e-12
    assert_close(probs.sum(0), torch.ones(B, T, dtype=torch.float64), 1e-12,
          "sum over the vocabulary of exp(token_logprobs)")


@against("seq_logprob_reads_padding")
@given(b=padded_batches(dtypes=(torch.float64,)), fill=st.sampled_from([math.nan, 1e30]))
@example(b=UNEQUAL, fill=math.nan)
@example(b=UNEQUAL, fill=1e30)
def test_sequence_logprob_sums_only_the_real_prefix(rf, b, fill):
    logp = -b.uniform(0.0, 5.0)                           # token log-probs are <= 0
    expected = torch.stack([logp[i, :n].sum() for i, n in enumerate(b.lengths)])
    # float64 sums of <= 6 terms of size <= 5: a few ulps; tolerance 1e-12
    assert_close(rf.sequence_logprob(fill_padding(logp, b.mask, fill), b.mask), expected, 1e-12,
          f"sequence_logprob with padding filled by {fill} vs the sum over the real prefix")


@against("seq_logprob_reads_padding")
@given(b=padded_batches(), fill=st.sampled_from([math.nan, 1e30]))
@example(b=Padded([3, 1, 2], 4, seed=13, dtype=torch.float32), fill=math.nan)
def test_sequence_logprob_gradient_is_one_on_real_tokens_and_zero_on_padding(rf, b, fill):
    logp = fill_padding(-b.uniform(0.0, 5.0), b.mask, fill).requires_grad_(True)
    rf.sequence_logprob(logp, b.mask).sum().backward()
    # d (sum over real tokens) / d logp is exactly the mask: tolerance 0, in float32 and float64
    assert_close(logp.grad, b.mask.to(torch.float64), 0.0,
          f"d sequence_logprob / d token_logp with padding filled by {fill} ({b.dtype})")
