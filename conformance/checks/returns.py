"""Returns and GAE: ``discounted_returns`` and ``gae``.

Equations and sources: ``refimpl/returns.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import torch

import refimpl
from conformance.checks.templates import (
    EMPTY,
    EXACT,
    F64,
    PADDED,
    M,
    Op,
    all_rows,
    input_check,
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
