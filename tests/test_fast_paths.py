"""The fast formulations in refimpl against the plain ones kept beside them (the readable
references), on inputs long enough for the fast path to differ: GAE and returns in blocks of
``refimpl.returns.BLOCK`` steps against the reverse scan over T; PPO's one-clamp form against
the paper's max of two products; group statistics accumulated in float64 against an exact oracle.

Tolerances are rounding bounds, derived, not fitted: a sum of n float terms computed in any order
has an error at most (n - 1) * eps * sum |terms| (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., 2002, Sec. 4.2); the blocked sum adds at most BLOCK terms before each carry
and at most one carry per level of blocks.
"""

import math

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from refimpl import batch_normalized_advantages, discounted_returns, gae, policy_gradient_loss
from refimpl.policy_loss import ppo_clip_loss_plain
from refimpl.returns import BLOCK, discounted_returns_loop, discounted_returns_scan, gae_loop, gae_scan
from tests.harness import against, assert_close, lengths_mask

gammas = st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])
lams = st.sampled_from([0.0, 0.3, 0.95, 1.0])


def _long_batch(seed, B, T, dtype, garbage=True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g).tolist()
    lengths[0] = T                                         # one full row
    mask = lengths_mask(lengths, T)
    r = torch.randn(B, T, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(B, T, generator=g, dtype=torch.float64).to(dtype)
    if garbage:                                            # padding must never be read
        r = r.masked_fill(~mask, float("nan"))
        v = v.masked_fill(~mask, 1e30)
    return r, v, mask


def _discounted_abs_sum(x, mask, c):
    """sum_{k>=t} c^(k-t) |x_k| over real entries, in float64: the scale of the rounding bound."""
    return discounted_returns_loop(torch.where(mask, x, 0.0).abs().double(), mask, c)


def _bound(T, eps):
    levels = max(1, math.ceil(math.log(max(T, 2), BLOCK)))
    return (BLOCK + 2 * levels + 4) * eps


@against("gae_forward_accumulation", "gae_off_by_one_bootstrap", "gae_gamma_lam_swapped")
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 31), T=st.sampled_from([BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 7]),
       gamma=gammas, lam=lams)
@example(seed=1, T=BLOCK * BLOCK + 5, gamma=0.99, lam=0.95)      # two levels of blocks
def test_blocked_gae_matches_the_scan_in_float64(rf, seed, T, gamma, lam):
    r, v, mask = _long_batch(seed, 3, T, torch.float64)
    A, R = rf.gae(r, v, mask, gamma, lam)
    A_scan, R_scan = gae_scan(r, v, mask, gamma, lam)
    delta = torch.where(mask, r, 0.0) + torch.where(mask, v, 0.0).abs() * (1 + gamma)
    scale = _discounted_abs_sum(delta, mask, gamma * lam) + torch.where(mask, v, 0.0).abs()
    tol = 2 * _bound(T, torch.finfo(torch.float64).eps) * scale
    assert bool(((A - A_scan).abs() <= tol).all()), f"blocked gae vs the scan: {(A - A_scan).abs().max():.3g}"
    assert bool(((R - R_scan).abs() <= tol).all()), "blocked gae returns vs the scan"
    assert bool((A[~mask] == 0).all() and (R[~mask] == 0).all()), "padding must be exactly 0"


@against("returns_forward_in_time")
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 31), T=st.sampled_from([BLOCK + 1, 5 * BLOCK]), gamma=gammas)
@example(seed=2, T=BLOCK * BLOCK + 5, gamma=1.0)                   # two levels of blocks
def test_blocked_returns_are_as_accurate_as_float32_allows(rf, seed, T, gamma):
    r, _, mask = _long_batch(seed, 3, T, torch.float32)
    G = rf.discounted_returns(r, mask, gamma)
    exact = discounted_returns_scan(r.double(), mask, gamma)
    tol = _bound(T, torch.finfo(torch.float32).eps) * _discounted_abs_sum(r, mask, gamma)
    err = (G.double() - exact).abs()
    assert bool((err <= tol + 1e-30).all()), f"blocked returns: error {err.max():.3g} over the bound"
    assert bool((G[~mask] == 0).all())


def test_the_scans_match_the_plain_loops():
    """The readable references agree with the per-float loops (float64, a few ulps)."""
    for seed, T in [(0, 1), (1, 7), (2, 70)]:
        r, v, mask = _long_batch(seed, 4, T, torch.float64)
        for gamma, lam in [(1.0, 1.0), (0.99, 0.95), (0.0, 0.3), (0.5, 0.0)]:
            assert_close(discounted_returns_scan(r, mask, gamma),
                         discounted_returns_loop(r, mask, gamma), 1e-12, "returns scan vs loop")
            A, R = gae_scan(r, v, mask, gamma, lam)
            A_loop, R_loop = gae_loop(r, v, mask, gamma, lam)
            assert_close(A, A_loop, 1e-12, "gae scan vs loop")
            assert_close(R, R_loop, 1e-12, "gae scan returns vs loop")


@against("ppo_min_max_swapped", "ppo_clip_high_ignored", "ppo_ratio_inverted", "ppo_dual_clip_max")
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31), per_row=st.booleans(),
       clip_high=st.sampled_from([None, 0.28]), dual_clip=st.sampled_from([None, 1.5, 3.0]))
def test_one_clamp_ppo_equals_the_papers_formula(rf, seed, per_row, clip_high, dual_clip):
    """Value and gradient in float64, with ratios on both sides of both bounds and NaN padding."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 9
    mask = lengths_mask(torch.randint(1, T + 1, (B,), generator=g).tolist(), T)
    logp = torch.randn(B, T, generator=g, dtype=torch.float64)
    old = logp + 0.6 * torch.randn(B, T, generator=g, dtype=torch.float64)
    A = torch.randn(B if per_row else (B, T), generator=g, dtype=torch.float64)
    noisy = logp.masked_fill(~mask, float("nan")).requires_grad_()
    plain = logp.clone().requires_grad_()
    loss = rf.ppo_clip_loss(noisy, old, A, mask, 0.2, clip_high, dual_clip)
    loss.backward()
    expected = ppo_clip_loss_plain(plain, old, A, mask, 0.2, clip_high, dual_clip)
    expected.backward()
    assert_close(loss, expected, 1e-12, "one-clamp PPO vs the paper's formula")
    assert_close(noisy.grad, plain.grad, 1e-12, "its gradient")


def test_group_means_accumulate_in_float64():
    """Float32 scores: the advantage is the float64 result rounded once (no float32 accumulation
    error of many scores), and an all-equal group gives exactly 0."""
    import refimpl
    g = torch.Generator().manual_seed(3)
    n = 4096
    scores = (1000 + torch.rand(2 * n, generator=g, dtype=torch.float64)).float()
    ids = torch.arange(2 * n) // n
    for scale in ("none", "group"):
        got = refimpl.group_normalized_advantages(scores, ids, scale)
        exact = refimpl.group_normalized_advantages(scores.double(), ids, scale)
        ulp = torch.finfo(torch.float32).eps * exact.abs()
        assert bool(((got.double() - exact).abs() <= ulp).all()), \
            f"scale={scale}: more than one float32 rounding away from the float64 result"
    loo = refimpl.leave_one_out_advantages(scores, ids)
    exact = refimpl.leave_one_out_advantages(scores.double(), ids)
    assert bool(((loo.double() - exact).abs() <= torch.finfo(torch.float32).eps * exact.abs()).all())
    constant = torch.full((8,), 0.1, dtype=torch.float32)
    assert bool((refimpl.group_normalized_advantages(constant, torch.zeros(8, dtype=torch.long)) == 0).all())


# --- edges of the fast paths (a review of the blocked sums, the masks and the caches) ------------

def test_matrices_cached_under_inference_mode_still_serve_a_backward():
    """The discount matrices are cached; one first built inside ``torch.inference_mode`` (a
    rollout) must still serve a later call that differentiates (an update step)."""
    from refimpl.returns import _discount_matrix
    _discount_matrix.cache_clear()
    mask = lengths_mask([100, 37], 100)
    with torch.inference_mode():
        refimpl_returns = discounted_returns(torch.randn(2, 100), mask, 0.93)
    assert refimpl_returns.shape == (2, 100)
    r = torch.randn(2, 100, requires_grad=True)
    discounted_returns(r, mask, 0.93).sum().backward()       # raised before: inference tensors
    # d sum_t G_t / d r_k = sum_{t<=k} gamma^(k-t): row 0, k = 0 is 1
    assert r.grad[0, 0].item() == 1.0 and bool(torch.isfinite(r.grad).all())


def test_half_precision_returns_keep_powers_below_half_precisions_smallest_normal():
    """gamma^15 = 2^-15 is below float16's smallest normal (2^-14), yet 1000 * 2^-15 = 0.0305 is
    an ordinary float16 number: the sum must not drop the term (it is done in float32)."""
    r = torch.zeros(1, 16, dtype=torch.float16)
    r[0, 15] = 1000.0
    G = discounted_returns(r, torch.ones(1, 16, dtype=torch.bool), 0.5)
    assert G.dtype == torch.float16
    # 1000 * 2^-15 = 0.030517578125 is exactly representable in float16
    assert G[0, 0].item() == 1000.0 * 2.0 ** -15


def test_a_row_longer_than_a_block_comes_back_contiguous():
    T = BLOCK + 7
    G = discounted_returns(torch.randn(3, T), lengths_mask([T, 5, 70], T), 0.9)
    assert G.is_contiguous() and G.view(-1).shape == (3 * T,)


def test_no_rows_is_no_output_not_a_crash():
    for fn in (lambda r, m: discounted_returns(r, m, 0.9), lambda r, m: gae(r, r, m)[0]):
        out = fn(torch.zeros(0, 70), torch.zeros(0, 70, dtype=torch.bool))
        assert out.shape == (0, 70)


def test_sequence_advantage_gradient_ignores_nan_log_probs_at_padding():
    """d loss / d A_b = -sum_t w_t logp_t over real tokens: a NaN log-prob at padding must not
    reach it (0 * NaN is NaN if padding is multiplied rather than selected)."""
    mask = lengths_mask([3, 1], 3)
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("nan"), float("nan")]])
    A = torch.tensor([1.0, 2.0], requires_grad=True)
    policy_gradient_loss(logp, A, mask, agg="seq-mean-token-sum").backward()
    # seq-mean-token-sum: loss = -(1/B) sum_b A_b sum_t logp_bt  ->  grad = -(1/2) sum_t logp_bt
    assert A.grad.tolist() == [3.0, 0.25]


def test_whitening_without_eps_and_without_spread_keeps_padding_zero():
    mask = lengths_mask([2, 1], 2)
    out = batch_normalized_advantages(torch.tensor([[1.0, 1.0], [1.0, 5.0]]), mask, eps=0.0)
    assert out[1, 1].item() == 0.0            # padded; the real entries are 0/0 (no spread)
    assert bool(out[mask].isnan().all())
