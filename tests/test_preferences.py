"""Preference losses (Bradley-Terry, DPO, IPO): their limits, gradients and minimisers, each
derived from the math and found from the loss itself by autograd or a 1-D solve (bisection on the
autograd derivative of a convex loss).

Sources: Rafailov et al. 2023 (arXiv:2305.18290) Eq. 7 and Sec. 4; Mitchell 2023 (cDPO note):
the smoothed loss is minimised at z* = log((1 - ls) / ls); Azar et al. 2024 (arXiv:2310.12036)
Eq. 17; Bradley & Terry 1952, Ouyang et al. 2022 Eq. 1, Touvron et al. 2023 Eq. 2.
"""

import math

import torch
import torch.nn.functional as F
from hypothesis import example, given
from hypothesis import strategies as st

from tests.harness import against, assert_close

LOG2 = math.log(2.0)
betas = st.sampled_from([0.01, 0.1, 0.5, 1.0, 5.0])
smoothings = st.sampled_from([0.0, 0.1, 0.25, 0.4])
seeds = st.integers(0, 2 ** 32 - 1)


def _refs(seed, n, dtype=torch.float64):
    """Whole-sequence log-probs: reference chosen/rejected and policy rejected, all negative
    (sums of token log-probs), so the reference terms are nonzero and differ from each other."""
    gen = torch.Generator().manual_seed(seed)
    rc, rr, pr = (-30.0 * torch.rand(3, n, generator=gen, dtype=torch.float64) - 0.5)
    return rc.to(dtype), rr.to(dtype), pr.to(dtype)


def _margin(pc, pr, rc, rr):
    """The contract's h = (pc - rc) - (pr - rr), written out here."""
    return (pc - rc) - (pr - rr)


def _grad(fn, x):
    """d sum(fn(x)) / dx; the losses are per pair, so this is each pair's own derivative."""
    x = x.detach().clone().requires_grad_(True)
    fn(x).sum().backward()
    return x.grad


def _root_of_increasing(g, lo, hi, iters=200):
    """Bisection for g(x) = 0, g increasing (the derivative of a convex loss), elementwise."""
    lo, hi = lo.clone(), hi.clone()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        neg = g(mid) < 0
        new_lo, new_hi = torch.where(neg, mid, lo), torch.where(neg, hi, mid)
        if torch.equal(new_lo, lo) and torch.equal(new_hi, hi):
            break           # a step is a function of (lo, hi): a fixed point stays one (~70 steps)
        lo, hi = new_lo, new_hi
    return 0.5 * (lo + hi)


# --- DPO -----------------------------------------------------------------------------------------

@against("dpo_ignores_reference")
@given(seed=seeds, beta=betas, ls=smoothings, shift=st.floats(-20, 20))
@example(seed=3, beta=1.0, ls=0.0, shift=2.5)
def test_dpo_loss_is_log2_at_zero_margin(rf, seed, beta, ls, shift):
    # pc - rc = pr - rr = shift, so z = 0 although pc != pr (the reference terms must cancel)
    rc, rr, _ = _refs(seed, 8)
    pc, pr = rc + shift, rr + shift
    loss = rf.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls)
    # h is 0 up to the rounding of pc - rc (ulp(50) ~ 7e-15), so z ~ 1e-14 moves the loss by
    # less than 1e-14: 1e-12 leaves margin
    assert_close(loss, torch.full_like(loss, LOG2), 1e-12, "dpo_loss at z = 0 vs log 2")


@against("dpo_sign_flipped", "dpo_smoothing_swapped", "dpo_ignores_reference")
@given(seed=seeds, ls=smoothings)
@example(seed=0, ls=0.1)
def test_dpo_loss_tends_to_log2_linearly_as_beta_vanishes(rf, seed, ls):
    beta = 1e-9
    rc, rr, pr = _refs(seed, 16)
    gen = torch.Generator().manual_seed(seed + 1)
    pc = -30.0 * torch.rand(16, generator=gen, dtype=torch.float64) - 0.5
    h = _margin(pc, pr, rc, rr)
    loss = rf.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls)
    # |d loss / dz| <= 1/2 near z = 0 and the curvature is <= 1/4, so |loss - log 2| <= |z|/2 +
    # z^2/8 (|z| <= 3e-8 here); 1e-15 covers the rounding of the O(1) loss (a few ulps, ~3e-16)
    bound = beta * h.abs() / 2 + beta ** 2 * h ** 2 / 8 + 1e-15
    assert bool(((loss - LOG2).abs() <= bound).all()), "dpo_loss is not within beta*|h|/2 of log 2"
    # Taylor: loss = log 2 + (ls - 1/2) z + z^2/8 + O(z^4). Divided by beta, the rounding of the
    # O(1) loss (a few ulps, ~3e-16) becomes ~3e-7; tolerance 1e-5
    slope = (loss - LOG2) / beta
    assert_close(slope, (ls - 0.5) * h + beta * h ** 2 / 8, 1e-5,
          "(dpo_loss - log 2) / beta vs (ls - 1/2) h as beta -> 0")


@against("dpo_sign_flipped", "dpo_smoothing_swapped", "dpo_ignores_reference")
@given(h=st.lists(st.floats(-60, 60), min_size=1, max_size=8), beta=st.floats(1e-3, 5.0),
       seed=seeds)
@example(h=[3.0, -1.5, 0.25], beta=0.1, seed=1)
def test_dpo_gradient_weight_is_beta_sigmoid_of_minus_z(rf, h, beta, seed):
    h = torch.tensor(h, dtype=torch.float64)
    rc, rr, pr = _refs(seed, len(h))
    pc = rc + (pr - rr) + h
    z = beta * _margin(pc, pr, rc, rr)
    weight = beta * torch.sigmoid(-z)          # Rafailov et al., Sec. 4
    g_c = _grad(lambda x: rf.dpo_loss(x, pr, rc, rr, beta=beta), pc)
    g_r = _grad(lambda x: rf.dpo_loss(pc, x, rc, rr, beta=beta), pr)
    # autograd of softplus vs the closed form in float64: a few ulps of beta (<= 5)
    assert_close(g_c, -weight, 1e-12, "d dpo_loss / d policy_chosen_logps vs -beta sigmoid(-z)")
    assert_close(g_r, weight, 1e-12, "d dpo_loss / d policy_rejected_logps vs +beta sigmoid(-z)")


@against("dpo_sign_flipped", "dpo_smoothing_swapped", "dpo_ignores_reference")
@given(seed=seeds, beta=betas, ls=st.floats(0.01, 0.49))
@example(seed=5, beta=0.1, ls=0.1)
def test_dpo_smoothed_loss_is_minimised_at_log_odds_of_smoothing(rf, seed, beta, ls):
    rc, rr, pr = _refs(seed, 6)
    c = rc + (pr - rr)                         # pc = c gives z = 0; z = beta (pc - c)

    def loss_at(pc):
        return rf.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls)

    # the loss is convex in pc; bracket z in [-40, 40] and bisect its autograd derivative
    pc_min = _root_of_increasing(lambda x: _grad(loss_at, x), c - 40.0 / beta, c + 40.0 / beta)
    z_min = beta * _margin(pc_min, pr, rc, rr)
    z_star = math.log((1 - ls) / ls)
    # the derivative near z* has slope beta^2 ls (1 - ls) >= 0.0099 beta^2 and rounding ~1e-16
    # beta, and pc (<= 4000 in size) carries ulp 5e-13, times beta: z* to ~1e-11; tolerance 1e-8
    assert_close(z_min, torch.full_like(z_min, z_star), 1e-8,
          "argmin_z of the smoothed DPO loss vs log((1 - ls) / ls)")
    pc_star = c + z_star / beta
    # at z*, sigmoid(z*) = 1 - ls: the derivative is 0 and the loss is the binary entropy H(ls)
    assert_close(_grad(loss_at, pc_star), torch.zeros_like(pc_star), 1e-12 * beta + 1e-14,
          "d dpo_loss / d policy_chosen_logps at z*")
    entropy = -(1 - ls) * math.log(1 - ls) - ls * math.log(ls)
    assert_close(loss_at(pc_star), torch.full_like(pc_star, entropy), 1e-12, "dpo_loss at z* vs H(ls)")


@against("dpo_sign_flipped", "dpo_smoothing_swapped")
@given(seed=seeds, beta=betas)
@example(seed=2, beta=0.1)
def test_dpo_loss_without_smoothing_decreases_strictly_in_z(rf, seed, beta):
    rc, rr, pr = _refs(seed, 1)
    z = torch.linspace(-20.0, 20.0, 81, dtype=torch.float64)
    rc, rr, pr = rc.expand(81), rr.expand(81), pr.expand(81)
    pc = rc + (pr - rr) + z / beta

    def loss_at(x):
        return rf.dpo_loss(x, pr, rc, rr, beta=beta, label_smoothing=0.0)

    loss = loss_at(pc)
    # no finite minimiser: strictly decreasing on the grid, negative derivative everywhere,
    # and the infimum 0 approached but not reached (loss(z = 40) = softplus(-40) ~ 4e-18)
    assert bool((loss[1:] < loss[:-1]).all()), "dpo_loss(ls=0) is not strictly decreasing in z"
    assert bool((_grad(loss_at, pc) < 0).all()), "d dpo_loss / d pc is not negative everywhere"
    far = loss_at(rc + (pr - rr) + 40.0 / beta)[0]
    assert 0.0 < float(far) < 1e-16, f"dpo_loss at z = 40 is {float(far)}, not in (0, 1e-16)"


# --- IPO -----------------------------------------------------------------------------------------

taus = st.floats(0.01, 10.0)


@against("ipo_tau_not_halved")
@given(seed=seeds, tau=taus)
@example(seed=4, tau=0.1)
def test_ipo_loss_is_minimised_at_half_inverse_tau_with_value_zero(rf, seed, tau):
    rc, rr, pr = _refs(seed, 6)
    c = rc + (pr - rr)                         # pc = c + h

    def loss_at(pc):
        return rf.ipo_loss(pc, pr, rc, rr, tau=tau)

    L = 10.0 + 2.0 / tau                       # brackets both 1/(2 tau) and 1/tau
    pc_min = _root_of_increasing(lambda x: _grad(loss_at, x), c - L, c + L)
    h_min = _margin(pc_min, pr, rc, rr)
    h_star = 1.0 / (2.0 * tau)
    # h carries the rounding of log-probs of size <= ~300 (ulp 6e-14): tolerance 1e-10
    assert_close(h_min, torch.full_like(h_min, h_star), 1e-10, "argmin_h of ipo_loss vs 1/(2 tau)")
    # at h*, (h - h*)^2 with h off by ~1e-13 is ~1e-26: tolerance 1e-20
    assert_close(loss_at(c + h_star), torch.zeros_like(c), 1e-20, "ipo_loss at h* = 1/(2 tau)")


@against("ipo_tau_not_halved")
@given(seed=seeds, tau=taus, scale=st.sampled_from([0.1, 1.0, 30.0]))
@example(seed=6, tau=0.5, scale=1.0)
def test_ipo_gradient_is_twice_the_distance_to_target(rf, seed, tau, scale):
    rc, rr, pr = _refs(seed, 8)
    gen = torch.Generator().manual_seed(seed + 1)
    pc = rc + (pr - rr) + scale * torch.randn(8, generator=gen, dtype=torch.float64)
    d = 2.0 * (_margin(pc, pr, rc, rr) - 1.0 / (2.0 * tau))
    g_c = _grad(lambda x: rf.ipo_loss(x, pr, rc, rr, tau=tau), pc)
    g_r = _grad(lambda x: rf.ipo_loss(pc, x, rc, rr, tau=tau), pr)
    # float64, |h| and 1/(2 tau) <= ~150: a few ulps ~1e-13; tolerance 1e-10
    assert_close(g_c, d, 1e-10, "d ipo_loss / d policy_chosen_logps vs 2 (h - 1/(2 tau))")
    assert_close(g_r, -d, 1e-10, "d ipo_loss / d policy_rejected_logps vs -2 (h - 1/(2 tau))")


# --- Bradley-Terry -------------------------------------------------------------------------------

def _margin_arg(kind, n, gen):
    if kind == "none":
        return None, torch.zeros(n, dtype=torch.float64)
    if kind == "float":
        m = 0.5 + 2.0 * float(torch.rand((), generator=gen, dtype=torch.float64))
        return m, torch.full((n,), m, dtype=torch.float64)
    m = 0.5 + 2.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    return m, m


@against("bt_margin_sign", "bt_sign_flipped")
@given(seed=seeds, kind=st.sampled_from(["none", "float", "tensor"]))
@example(seed=7, kind="none")
@example(seed=7, kind="float")
@example(seed=7, kind="tensor")
def test_bradley_terry_gradient_is_sigmoid_of_margin_minus_one(rf, seed, kind):
    gen = torch.Generator().manual_seed(seed)
    chosen = 3.0 * torch.randn(8, generator=gen, dtype=torch.float64)
    rejected = 3.0 * torch.randn(8, generator=gen, dtype=torch.float64)
    margin, m = _margin_arg(kind, 8, gen)
    s = torch.sigmoid((chosen - rejected) - m)
    g_c = _grad(lambda x: rf.bradley_terry_loss(x, rejected, margin), chosen)
    g_r = _grad(lambda x: rf.bradley_terry_loss(chosen, x, margin), rejected)
    # autograd of softplus vs torch.sigmoid in float64: a few ulps; tolerance 1e-12
    assert_close(g_c, s - 1.0, 1e-12, f"d bt_loss / d chosen_rewards vs sigmoid(delta - m) - 1 ({kind})")
    assert_close(g_r, 1.0 - s, 1e-12, f"d bt_loss / d rejected_rewards vs 1 - sigmoid(delta - m) ({kind})")


@against("bt_sign_flipped")
@given(p=st.lists(st.floats(0.02, 0.98), min_size=1, max_size=8), seed=seeds)
@example(p=[0.9, 0.2, 0.6], seed=8)
def test_bradley_terry_minimiser_recovers_the_preference_probability(rf, p, seed):
    # pairs (a, b) where a wins with probability p: expected loss
    # p * loss(r_a, r_b) + (1 - p) * loss(r_b, r_a), with r_a - r_b = delta
    p = torch.tensor(p, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    base = 5.0 * torch.randn(len(p), generator=gen, dtype=torch.float64)

    def expected_loss(delta):
        return (p * rf.bradley_terry_loss(base + delta, base)
                + (1 - p) * rf.bradley_terry_loss(base, base + delta))

    lo, hi = torch.full_like(p, -30.0), torch.full_like(p, 30.0)
    delta = _root_of_increasing(lambda d: _grad(expected_loss, d), lo, hi)
    # the curvature sigmoid'(delta*) = p (1 - p) >= 0.0196 turns derivative rounding ~1e-16
    # into delta* error ~1e-14 (base <= ~25 adds ulp 4e-15); tolerance 1e-10 on sigmoid(delta*)
    assert_close(torch.sigmoid(delta), p, 1e-10, "sigmoid(argmin expected BT loss) vs p")


# --- per-pair output -----------------------------------------------------------------------------

dtypes = st.sampled_from([torch.float32, torch.float64])


def _tol(expected, dtype):
    # float64: a few ulps. float32: inputs <= ~30 carry rounding ~2e-6 in h, amplified by
    # |d loss / d h| <= max(beta, 2 |h - 1/(2 tau)|) ~ 2 sqrt(loss): 1e-4 (1 + loss) is ample
    scale = 1.0 + float(expected.abs().max())
    return 1e-12 * scale if dtype == torch.float64 else 1e-4 * scale


def _four(seed, n, dtype):
    rc, rr, pr = _refs(seed, n)
    gen = torch.Generator().manual_seed(seed + 1)
    pc = rc + (pr - rr) + 3.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    return [x.to(dtype) for x in (pc, pr, rc, rr)]


@against("dpo_sign_flipped", "dpo_smoothing_swapped", "dpo_ignores_reference")
@given(seed=seeds, n=st.integers(2, 8), dtype=dtypes, beta=betas, ls=smoothings)
@example(seed=9, n=4, dtype=torch.float64, beta=0.5, ls=0.1)
def test_dpo_loss_is_the_per_pair_formula_in_the_input_dtype(rf, seed, n, dtype, beta, ls):
    pc, pr, rc, rr = _four(seed, n, dtype)
    loss = rf.dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=ls)
    assert loss.shape == (n,), f"dpo_loss shape {tuple(loss.shape)}, expected ({n},): no reduction"
    assert loss.dtype == dtype, f"dpo_loss returned {loss.dtype} for {dtype} input"
    z = beta * _margin(*(x.double() for x in (pc, pr, rc, rr)))
    expected = -(1 - ls) * F.logsigmoid(z) - ls * F.logsigmoid(-z)
    assert_close(loss, expected, _tol(expected, dtype), "dpo_loss per pair vs Eq. 7 (with smoothing)")


@against("ipo_tau_not_halved")
@given(seed=seeds, n=st.integers(2, 8), dtype=dtypes, tau=st.sampled_from([0.05, 0.1, 1.0]))
@example(seed=10, n=4, dtype=torch.float32, tau=0.1)
def test_ipo_loss_is_the_per_pair_formula_in_the_input_dtype(rf, seed, n, dtype, tau):
    pc, pr, rc, rr = _four(seed, n, dtype)
    loss = rf.ipo_loss(pc, pr, rc, rr, tau=tau)
    assert loss.shape == (n,), f"ipo_loss shape {tuple(loss.shape)}, expected ({n},): no reduction"
    assert loss.dtype == dtype, f"ipo_loss returned {loss.dtype} for {dtype} input"
    h = _margin(*(x.double() for x in (pc, pr, rc, rr)))
    expected = (h - 1.0 / (2.0 * tau)) ** 2
    assert_close(loss, expected, _tol(expected, dtype), "ipo_loss per pair vs Eq. 17")


@against("bt_margin_sign", "bt_sign_flipped")
@given(seed=seeds, n=st.integers(2, 8), dtype=dtypes,
       kind=st.sampled_from(["none", "float", "tensor"]))
@example(seed=11, n=4, dtype=torch.float64, kind="tensor")
@example(seed=11, n=4, dtype=torch.float32, kind="float")
def test_bradley_terry_loss_is_the_per_pair_formula_in_the_input_dtype(rf, seed, n, dtype, kind):
    gen = torch.Generator().manual_seed(seed)
    chosen = 3.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    rejected = 3.0 * torch.randn(n, generator=gen, dtype=torch.float64)
    margin, m = _margin_arg(kind, n, gen)
    if isinstance(margin, torch.Tensor):
        margin = margin.to(dtype)
    loss = rf.bradley_terry_loss(chosen.to(dtype), rejected.to(dtype), margin)
    assert loss.shape == (n,), f"bt_loss shape {tuple(loss.shape)}, expected ({n},): no reduction"
    assert loss.dtype == dtype, f"bradley_terry_loss returned {loss.dtype} for {dtype} input"
    c, r = chosen.to(dtype).double(), rejected.to(dtype).double()
    mm = m.to(dtype).double() if kind == "tensor" else m
    expected = -F.logsigmoid(c - r - mm)
    assert_close(loss, expected, _tol(expected, dtype), f"bt_loss per pair vs -log sigmoid(delta - m) "
          f"(margin {kind})")
