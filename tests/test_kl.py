"""KL estimators k1, k2, k3 (Schulman 2020) and the KL-penalised token reward (Ziegler et al.
2019, arXiv:1909.08593, Sec. 2), value by value."""

import math

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tests.harness import Padded, against, assert_close, fill_padding, padded_batches

UNEQUAL = Padded([3, 1, 2], 4, seed=3, dtype=torch.float64)
log_ratios = st.floats(-20, 20)


@against("k1_ratio_inverted", "k2_missing_half", "k3_ratio_inverted", "k3_log_sign_flipped")
@given(l=st.lists(log_ratios, min_size=1, max_size=6), base=st.floats(-5, 0))
@example(l=[0.7, -1.3, 0.0, 5.0], base=-1.0)
def test_kl_estimators_follow_their_definitions(rf, l, base):
    logp = torch.tensor([[base + x for x in l]], dtype=torch.float64)
    ref_logp = torch.full_like(logp, base)
    lr = (logp - ref_logp)[0].tolist()                    # l as the function sees it
    expected = {"k1": lr, "k2": [x * x / 2 for x in lr],
                "k3": [math.exp(-x) - 1 + x for x in lr]}
    for kind, values in expected.items():
        got = rf.kl_estimate(logp, ref_logp, None, kind)[0]
        # relative 1e-13: exp(20) ~ 5e8, so k3 carries ~1e-7 absolute rounding there
        tol = 1e-13 * max(1.0, max(abs(v) for v in values))
        assert_close(got, values, tol, f"kl_estimate(kind={kind!r})")


@against("k3_log_sign_flipped")
@given(b=padded_batches(), scale=st.sampled_from([0.01, 1.0, 10.0]))
@example(b=UNEQUAL, scale=3.0)
def test_k3_is_nonnegative(rf, b, scale):
    logp, ref_logp = b.randn(scale=scale), b.randn(scale=scale)
    k3 = rf.kl_estimate(logp, ref_logp, b.mask, "k3")
    assert bool((k3 >= 0).all()), f"k3 has a negative entry: min {float(k3.min()):.3e}"


@against("score_at_padded_end", "kl_reward_sign_flipped")
@given(b=padded_batches(dtypes=(torch.float64,)), beta=st.sampled_from([0.0, 0.05, 1.0]),
       kind=st.sampled_from(["k1", "k2", "k3"]))
@example(b=UNEQUAL, beta=0.1, kind="k1")
def test_kl_penalized_rewards_put_the_score_at_the_last_real_token(rf, b, beta, kind):
    logp, ref_logp, scores = b.randn(), b.randn(), b.randn(b.B)
    got = rf.kl_penalized_rewards(scores, fill_padding(logp, b.mask, float("nan")), ref_logp,
                                  b.mask, beta, kind)
    l = logp - ref_logp
    k = {"k1": l, "k2": 0.5 * l ** 2, "k3": torch.exp(-l) - 1 + l}[kind]
    expected = torch.where(b.mask, -beta * k, torch.zeros_like(k))
    for row, n in enumerate(b.lengths):
        expected[row, n - 1] += scores[row]
    assert_close(got, expected, 1e-12, "shaped rewards: -beta k on real tokens, score at the last one")
