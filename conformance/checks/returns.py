"""Returns and GAE: ``discounted_returns`` and ``gae``.

Equations and sources: ``refimpl/returns.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import math

import torch

import refimpl
from conformance.checks.templates import (
    EMPTY,
    EXACT,
    F32,
    F64,
    PADDED,
    M,
    Op,
    all_rows,
    input_check,
    lengths_mask,
    mutant,
    rand_bt,
    register_op,
    sample_bt,
    tabular_policy,
    zero_pad,
)
from conformance.context import Context
from conformance.registry import check
from refimpl import _checks


# --- mutants --------------------------------------------------------------------------------------
def _gae_variant(rewards, values, mask, gamma=1.0, lam=0.95, *, next_value="next", forward=False,
                 returns_add_v=True, read_padding=False):
    m = _checks.bool_mask(mask, rewards.shape)
    _checks.unit_interval("gamma", gamma)
    _checks.unit_interval("lam", lam)
    r = rewards if read_padding else zero_pad(rewards, m)
    V = values if read_padding else zero_pad(values, m)
    B, T = r.shape
    A = [None] * T
    order = range(T) if forward else reversed(range(T))
    carry = torch.zeros_like(r[:, 0])
    for t in order:
        if next_value == "same":
            v_next = V[:, t]
        elif read_padding:
            v_next = V[:, t + 1] if t + 1 < T else torch.zeros_like(r[:, 0])
        else:
            v_next = zero_pad(V[:, t + 1], m[:, t + 1]) if t + 1 < T else torch.zeros_like(r[:, 0])
        delta = r[:, t] + gamma * v_next - V[:, t]
        a = delta + gamma * lam * carry
        a = torch.where(m[:, t], a, torch.zeros_like(a))
        A[t] = a
        carry = a
    A = torch.stack(A, 1)
    ret = zero_pad(A + V, m) if returns_add_v else A
    return A, ret


@mutant("gae", "bootstraps from V[t+1] even after the last real token, reading the padding")
def gae_bootstraps_past_last_token(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_variant(rewards, values, mask, gamma, lam, read_padding=True)


@mutant("gae", "off-by-one bootstrap: delta_t = r_t + gamma V(s_t) - V(s_t)")
def gae_off_by_one_bootstrap(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_variant(rewards, values, mask, gamma, lam, next_value="same")


@mutant("gae", "accumulates advantages forward in time instead of backward")
def gae_forward_accumulation(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_variant(rewards, values, mask, gamma, lam, forward=True)


@mutant("gae", "returns = advantages, forgetting to add V back")
def gae_returns_without_value(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_variant(rewards, values, mask, gamma, lam, returns_add_v=False)


@mutant("gae", "lambda and gamma swapped in the recurrence (lam is the discount of delta)")
def gae_gamma_lam_swapped(rewards, values, mask, gamma=1.0, lam=0.95):
    return refimpl.gae(rewards, values, mask, gamma=lam, lam=gamma)


@mutant("gae", "accepts lam outside [0, 1] without complaint")
def gae_accepts_any_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    return refimpl.gae(rewards, values, mask, gamma=gamma, lam=min(max(lam, 0.0), 1.0))


@mutant("gae", "lam = 0 taken as unset (`lam or 0.95`)")
def gae_lam_zero_as_default(rewards, values, mask, gamma=1.0, lam=0.95):
    return refimpl.gae(rewards, values, mask, gamma, lam or 0.95)


@mutant("gae", "gamma = 0 taken as unset (`gamma or 1.0`)")
def gae_gamma_zero_as_default(rewards, values, mask, gamma=1.0, lam=0.95):
    return refimpl.gae(rewards, values, mask, gamma or 1.0, lam)


@mutant("gae", "lam = 1 short-cut to the undiscounted return minus V (gamma dropped there)")
def gae_lam_one_undiscounted(rewards, values, mask, gamma=1.0, lam=0.95):
    return refimpl.gae(rewards, values, mask, 1.0 if lam == 1 else gamma, lam)


@mutant("discounted_returns", "gamma = 0 taken as unset (`gamma or 1.0`): undiscounted returns")
def returns_gamma_zero_as_default(rewards, mask, gamma=1.0):
    return refimpl.discounted_returns(rewards, mask, gamma or 1.0)


@mutant("discounted_returns", "accumulates the return forward in time (G_t = r_t + gamma G_{t-1})")
def returns_forward_in_time(rewards, mask, gamma=1.0):
    m = _checks.bool_mask(mask, rewards.shape)
    r = zero_pad(rewards, m)
    out, G = [], torch.zeros_like(r[:, 0])
    for t in range(r.shape[1]):
        G = r[:, t] + gamma * G
        out.append(torch.where(m[:, t], G, torch.zeros_like(G)))
    return torch.stack(out, 1)


@mutant("discounted_returns", "float32 input accumulated in bfloat16 (an autocast-style "
        "low-precision path), result cast back")
def returns_accumulate_in_bfloat16(rewards, mask, gamma=1.0):
    if rewards.dtype != torch.float32:
        return refimpl.discounted_returns(rewards, mask, gamma)
    return refimpl.discounted_returns(rewards.to(torch.bfloat16), mask, gamma).to(rewards.dtype)


@mutant("discounted_returns", "returns float32 whatever the input dtype")
def returns_cast_to_float32(rewards, mask, gamma=1.0):
    return refimpl.discounted_returns(rewards, mask, gamma).float()


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("discounted_returns", lambda c, s: ((sample_bt(c, s), s.mask()), {}), PADDED, "BT",
       padded=(0,), diff=(0,), variants=({"gamma": 1.0}, {"gamma": 0.9}),
       mutants={"matches-reference": ("returns_forward_in_time",),
                "dtype-kept": ("returns_cast_to_float32",)}))

register_op(Op("gae", lambda c, s: ((sample_bt(c, s), sample_bt(c, s), s.mask()), {}), PADDED, "pair",
       padded=(0, 1), diff=(0, 1),
       variants=({"gamma": 1.0, "lam": 0.95}, {"gamma": 0.9, "lam": 0.0}, {"gamma": 0.99, "lam": 1.0}),
       mutants={"matches-reference": ("gae_off_by_one_bootstrap", "gae_forward_accumulation",
                                      "gae_returns_without_value", "gae_gamma_lam_swapped"),
                "padding-nan": ("gae_bootstraps_past_last_token",),
                "padding-1e30": ("gae_bootstraps_past_last_token",)}))


# --- invalid input --------------------------------------------------------------------------------
input_check("gae/rejects-lam-outside-unit-interval", "lam",
             lambda c: ((rand_bt(c), rand_bt(c), M), {"lam": 0.95}),
             lambda c: ((rand_bt(c), rand_bt(c), M), {"lam": 1.5}),
             "check 0 <= lam <= 1 and raise ValueError('lam ...')", ("gae_accepts_any_lambda",))
input_check("gae/rejects-row-without-real-token", "mask",
             lambda c: ((rand_bt(c), rand_bt(c), M), {}), lambda c: ((rand_bt(c), rand_bt(c), EMPTY), {}),
             "a row with no real token has no last token to end the episode: raise ValueError")
input_check("discounted_returns/rejects-gamma-outside-unit-interval", "gamma",
             lambda c: ((rand_bt(c), M), {"gamma": 0.9}), lambda c: ((rand_bt(c), M), {"gamma": -0.1}),
             "check 0 <= gamma <= 1")
input_check("discounted_returns/rejects-integer-rewards", "rewards",
             lambda c: ((rand_bt(c), M), {}), lambda c: ((torch.ones(3, 4, dtype=torch.int64), M), {}),
             "integer rewards are a ValueError, not a silent integer result")


# --- analytic checks ------------------------------------------------------------------------------
def _mdp():
    pol, _ = tabular_policy(max_len=3, seed=11)
    rewards = torch.randn(pol.theta.shape, generator=torch.Generator().manual_seed(12), dtype=F64)
    return pol, rewards


# --- valid edge values (docs/contract.md, "Invalid arguments": gamma = 0, lam = 0, lam = 1) ----
GAE = "Schulman et al. 2015, arXiv:1506.02438, Sec. 3, Eqs. 16-18"
EDGE = lengths_mask([4, 1, 3], 5)


def _edge_inputs(ctx, dtype, values=True):
    """Rewards (and values) on ``EDGE``, 0 at padding: these checks are about the edge value of
    gamma or lam, not about what stands at padded positions (the padding-* checks are)."""
    r = zero_pad(ctx.randn(3, 5, dtype=dtype), EDGE)
    return (r, zero_pad(ctx.randn(3, 5, dtype=dtype), EDGE)) if values else r


def _next_value(V, mask):
    """V(s_{t+1}) on real tokens: the next token's value, 0 after the row's last real token."""
    nxt = torch.cat([V[:, 1:], torch.zeros_like(V[:, :1])], dim=1)
    nxt_real = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    return torch.where(nxt_real, nxt, torch.zeros_like(nxt))


def _closed_form_return(r, mask, gamma):
    """G_t = sum_{k=t}^{last} gamma^(k - t) r_k as a matrix product (no recurrence)."""
    T = r.shape[1]
    k, t = torch.arange(T).unsqueeze(0), torch.arange(T).unsqueeze(1)
    power = (k - t).clamp(min=0).to(F64)
    D = torch.where(k >= t, torch.full_like(power, gamma) ** power, torch.zeros_like(power))
    return zero_pad(zero_pad(r.to(F64), mask) @ D.T, mask)


def _on_real(x, mask):
    return torch.where(mask, x.detach().to(F64), torch.zeros((), dtype=F64))


@mutant("discounted_returns", "the discount series truncated where gamma^k falls below 1e-7 "
        "(a geometric-series shortcut)")
def returns_truncated_series(rewards, mask, gamma=1.0):
    out = torch.zeros_like(rewards)
    T = rewards.shape[1]
    terms = T if gamma in (0.0, 1.0) else max(1, int(math.log(1e-7) / math.log(gamma)))
    r = torch.where(mask, rewards, torch.zeros_like(rewards))
    for t in range(T):
        for k in range(t, min(T, t + terms)):
            out[:, t] = out[:, t] + gamma ** (k - t) * r[:, k]
    return torch.where(mask, out, torch.zeros_like(out))


@check("discounted_returns/small-gamma-keeps-every-term", kind="reference",
       section="returns-and-advantages", source="Sutton & Barto 2018, Sec. 3.3, Eq. 3.8",
       equation="G_t = sum_{k >= t} gamma^(k - t) r_k, every term kept however small gamma^k",
       hint="keep every term of the discounted sum (a backward recurrence G_t = r_t + gamma "
            "G_{t+1} does); do not cut the series where gamma^k looks negligible",
       mutants=("returns_truncated_series",))
def returns_small_gamma(ctx: Context):
    mask = torch.ones(2, 4, dtype=torch.bool)
    for gamma in (1e-3, 0.02):
        ctx.on(f"full_rows/float64 gamma={gamma}")
        r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, -3.0]], dtype=F64)
        out = ctx.expect_tensor(ctx.call(r, mask, gamma), (2, 4), F64)
        ctx.compare(out, _closed_form_return(r, mask, gamma), f"returns at gamma = {gamma}",
                    dtype=out.dtype)


@check("discounted_returns/gamma-zero-gives-rewards", kind="reference",
       section="returns-and-advantages", source="Sutton & Barto 2018, Sec. 3.3, Eq. 3.8",
       equation="gamma = 0: G_t = r_t on every real token",
       hint="gamma = 0 is valid (only the immediate reward counts): do not treat it as unset "
            "and replace it by a default",
       mutants=("returns_gamma_zero_as_default",))
def returns_gamma_zero(ctx: Context):
    for dtype in (F64, F32):
        ctx.on(f"unequal_lengths/{str(dtype)[6:]} gamma=0")
        r = _edge_inputs(ctx, dtype, values=False)
        out = ctx.expect_tensor(ctx.call(r, EDGE, 0.0, valid_edge="gamma = 0"), (3, 5), dtype)
        ctx.compare(_on_real(out, EDGE), _on_real(r, EDGE), "returns at gamma = 0", dtype=out.dtype)


@check("gae/lam-zero-gives-td-error", kind="reference",
       section="returns-and-advantages", source=GAE + " (Eq. 17: lam = 0)",
       equation="lam = 0: A_t = delta_t = r_t + gamma V(s_{t+1}) - V(s_t), V = 0 after the last "
                "real token; returns_t = A_t + V(s_t)",
       hint="lam = 0 is valid (one-step TD): do not treat it as unset and replace it by a default",
       mutants=("gae_lam_zero_as_default",))
def gae_lam_zero(ctx: Context):
    for dtype in (F64, F32):
        ctx.on(f"unequal_lengths/{str(dtype)[6:]} gamma=0.9 lam=0")
        r, V = _edge_inputs(ctx, dtype)
        adv, ret = ctx.expect_pair(ctx.call(r, V, EDGE, 0.9, 0.0, valid_edge="lam = 0"), (3, 5), dtype)
        r64, V64 = r.to(F64), V.to(F64)
        delta = r64 + 0.9 * _next_value(V64, EDGE) - V64
        ctx.compare(_on_real(adv, EDGE), _on_real(delta, EDGE), "advantages at lam = 0", dtype=adv.dtype)
        ctx.compare(_on_real(ret, EDGE), _on_real(delta + V64, EDGE), "returns at lam = 0",
                    dtype=ret.dtype)


@check("gae/lam-one-gives-return-minus-value", kind="reference",
       section="returns-and-advantages", source=GAE + " (Eq. 18: lam = 1)",
       equation="lam = 1: A_t = G_t - V(s_t) with G_t = sum_{k=t}^{last} gamma^(k-t) r_k; "
                "returns_t = G_t",
       hint="at lam = 1 the V terms telescope: A_t = discounted return - V(s_t), with the "
            "discount gamma kept and no bootstrap after the last real token",
       mutants=("gae_lam_one_undiscounted",))
def gae_lam_one(ctx: Context):
    for dtype in (F64, F32):
        ctx.on(f"unequal_lengths/{str(dtype)[6:]} gamma=0.9 lam=1")
        r, V = _edge_inputs(ctx, dtype)
        adv, ret = ctx.expect_pair(ctx.call(r, V, EDGE, 0.9, 1.0, valid_edge="lam = 1"), (3, 5), dtype)
        G = _closed_form_return(r, EDGE, 0.9)
        ctx.compare(_on_real(adv, EDGE), _on_real(G - V.to(F64), EDGE), "advantages at lam = 1",
                    dtype=adv.dtype)
        ctx.compare(_on_real(ret, EDGE), _on_real(G, EDGE), "returns at lam = 1", dtype=ret.dtype)


@check("gae/gamma-zero-gives-reward-minus-value", kind="reference",
       section="returns-and-advantages", source=GAE,
       equation="gamma = 0: A_t = r_t - V(s_t) for every lam; returns_t = r_t",
       hint="gamma = 0 is valid (no bootstrap, no accumulation): do not treat it as unset and "
            "replace it by a default",
       mutants=("gae_gamma_zero_as_default",))
def gae_gamma_zero(ctx: Context):
    for dtype in (F64, F32):
        for lam in (0.95, 1.0):
            ctx.on(f"unequal_lengths/{str(dtype)[6:]} gamma=0 lam={lam}")
            r, V = _edge_inputs(ctx, dtype)
            adv, ret = ctx.expect_pair(ctx.call(r, V, EDGE, 0.0, lam, valid_edge="gamma = 0"), (3, 5), dtype)
            r64, V64 = r.to(F64), V.to(F64)
            ctx.compare(_on_real(adv, EDGE), _on_real(r64 - V64, EDGE),
                        f"advantages at gamma = 0, lam = {lam}", dtype=adv.dtype)
            ctx.compare(_on_real(ret, EDGE), _on_real(r64, EDGE),
                        f"returns at gamma = 0, lam = {lam}", dtype=ret.dtype)


# --- exact checks (every outcome of refimpl.tabular enumerated) ------------------------------------
@check("discounted_returns/exact-expected-return-is-value", kind="exact", tol=EXACT,
       section="returns-and-advantages", source="Sutton & Barto 2018, Sec. 3.5 (V and Q as expected returns)",
       equation="E[G_t | s_t] = V^pi(s_t) and E[G_t | s_t, a_t] = Q^pi(s_t, a_t), gamma = 0.9",
       hint="G_t = r_t + gamma G_{t+1}, accumulated backwards from the last real token",
       mutants=("returns_forward_in_time",),
       derivation="""\
V and Q come from backward induction over the prefix tree; the adapter's returns for every
response are averaged with the exact conditional probabilities of the responses through each
prefix (and each (prefix, token)).""")
def exact_returns(ctx: Context):
    pol, rewards = _mdp()
    V, Q, _ = pol.values(rewards, 0.9)
    mask, L = all_rows(pol)
    ctx.on("every response gamma=0.9")
    out = ctx.expect_tensor(ctx.call(pol.token_rewards(rewards).reshape(-1, L), mask, 0.9),
                            mask.shape, None)
    G = out.detach().to(F64).reshape(pol.n_prompts, -1, L)
    e, reach = pol.conditional_on_state(G)
    ctx.compare(e[reach > 0], V[reach > 0], "E[G_t | s_t] vs V(s_t)", dtype=out.dtype)
    e, reach = pol.conditional_on_transition(G)
    ctx.compare(e[reach > 0], Q[reach > 0], "E[G_t | s_t, a_t] vs Q(s_t, a_t)", dtype=out.dtype)


@check("gae/exact-advantage-with-true-values", kind="exact", tol=EXACT,
       section="returns-and-advantages", source="Schulman et al. 2015, arXiv:1506.02438, Sec. 3, Eq. 16",
       equation="with V = V^pi: E[A_hat_t | s_t, a_t] = A^pi(s_t, a_t) for lam in {0, 0.5, 0.95, 1}; "
                "E[returns_t | s_t, a_t] = Q^pi(s_t, a_t)",
       hint="delta_t = r_t + gamma V(s_{t+1}) - V(s_t) with V = 0 after the last real token; "
            "A_t = delta_t + gamma lam A_{t+1}, accumulated backwards",
       mutants=("gae_off_by_one_bootstrap", "gae_forward_accumulation", "gae_returns_without_value"),
       derivation="""\
With the true V, E[delta_{t+l} | s_t, a_t] = 0 for l >= 1 and E[delta_t | s_t, a_t] = Q - V =
A, so every lambda-weighted sum of TD residuals has conditional mean A^pi(s_t, a_t).""")
def exact_gae(ctx: Context):
    pol, rewards = _mdp()
    gamma = 0.9
    V, Q, A = pol.values(rewards, gamma)
    mask, L = all_rows(pol)
    for lam in (0.0, 0.5, 0.95, 1.0):
        ctx.on(f"every response gamma=0.9 lam={lam}")
        out = ctx.call(pol.token_rewards(rewards).reshape(-1, L), pol.along(V).reshape(-1, L),
                       mask, gamma, lam)
        adv, ret = ctx.expect_pair(out, mask.shape, None)
        for name, x, truth in (("advantages", adv, A), ("returns", ret, Q)):
            e, reach = pol.conditional_on_transition(x.detach().to(F64).reshape(pol.n_prompts, -1, L))
            ctx.compare(e[reach > 0], truth[reach > 0],
                        f"E[{name} | s, a] vs {'A' if name == 'advantages' else 'Q'}(s, a), lam={lam}",
                        dtype=adv.dtype)
