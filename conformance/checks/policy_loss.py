"""Policy losses: ``policy_gradient_loss`` (REINFORCE) and ``ppo_clip_loss`` (clip-higher, dual
clip).

Equations and sources: ``refimpl/policy_loss.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import torch

import refimpl
from conformance.checks.templates import (
    EXACT,
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
    tabular_policy,
)
from conformance.context import Context
from conformance.registry import check
from refimpl import _checks
from refimpl import tabular as tab
from refimpl.aggregation import aggregate
from refimpl.policy_loss import _zero_padded as _token_inputs


# --- mutants --------------------------------------------------------------------------------------
@mutant("policy_gradient_loss", "sign flipped: loss = +A * logp")
def pg_sign_flipped(logp, advantages, mask, agg="token-mean", norm_len=None):
    return -refimpl.policy_gradient_loss(logp, advantages, mask, agg, norm_len)


@mutant("policy_gradient_loss", "ignores agg and always takes the token mean")
def pg_ignores_agg(logp, advantages, mask, agg="token-mean", norm_len=None):
    _checks.one_of("agg", agg, refimpl.aggregation.AGG_MODES)
    return refimpl.policy_gradient_loss(logp, advantages, mask, "token-mean")


def _ppo_variant(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None, dual_clip=None,
                 agg="token-mean", norm_len=None, *, swap=False, ignore_high=False,
                 dual_everywhere=False, dual_max=False, inverted_ratio=False,
                 check_dual=True, ratio_cap=False, log_ratio_clamp=None):
    m, x = _token_inputs(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    if check_dual and dual_clip is not None and dual_clip <= 1:
        raise ValueError("dual_clip must be > 1")
    ch = clip_low if (clip_high is None or ignore_high) else clip_high
    A = x["advantages"]
    d = x["old_logp"] - x["logp"] if inverted_ratio else x["logp"] - x["old_logp"]
    if log_ratio_clamp is not None:
        d = torch.clamp(d, -log_ratio_clamp, log_ratio_clamp)
    r = torch.exp(d)
    if ratio_cap and dual_clip is not None:
        r = torch.clamp(r, max=dual_clip)
    u, c = -A * r, -A * torch.clamp(r, 1 - clip_low, 1 + ch)
    loss = torch.minimum(u, c) if swap else torch.maximum(u, c)
    if dual_clip is not None and not ratio_cap:
        floor = -dual_clip * A
        capped = torch.maximum(loss, floor) if dual_max else torch.minimum(loss, floor)
        loss = capped if dual_everywhere else torch.where(A < 0, capped, loss)
    return aggregate(loss, m, agg, norm_len)


@mutant("ppo_clip_loss", "min and max swapped (optimistic instead of pessimistic bound)")
def ppo_min_max_swapped(*args, **kw):
    return _ppo_variant(*args, **kw, swap=True)


@mutant("ppo_clip_loss", "clip_high ignored: clip_low used on both sides")
def ppo_clip_high_ignored(*args, **kw):
    return _ppo_variant(*args, **kw, ignore_high=True)


@mutant("ppo_clip_loss", "the dual-clip floor applied to positive advantages too")
def ppo_dual_clip_on_positive_advantages(*args, **kw):
    return _ppo_variant(*args, **kw, dual_everywhere=True)


@mutant("ppo_clip_loss", "dual clip takes max instead of min")
def ppo_dual_clip_max(*args, **kw):
    return _ppo_variant(*args, **kw, dual_max=True)


@mutant("ppo_clip_loss", "ratio upside down: exp(old_logp - logp)")
def ppo_ratio_inverted(*args, **kw):
    return _ppo_variant(*args, **kw, inverted_ratio=True)


@mutant("ppo_clip_loss", "accepts dual_clip <= 1 without complaint")
def ppo_accepts_dual_clip_le_one(*args, **kw):
    return _ppo_variant(*args, **kw, check_dual=False)


@mutant("ppo_clip_loss", "dual clip as a ratio cap: r clamped at c on every token before the "
        "clipped surrogate, no floor -c A (in the manner of INTELLECT-2's two-sided clipping, "
        "TRL's and Liger's delta, which cap only the unclipped term); the same as the dual clip "
        "only for c > 1 + clip_high")
def ppo_dual_clip_as_ratio_cap(*args, **kw):
    return _ppo_variant(*args, **kw, ratio_cap=True)


@mutant("ppo_clip_loss", "log-ratio clamped to [-20, 20] before exp")
def ppo_log_ratio_clamped(*args, **kw):
    return _ppo_variant(*args, **kw, log_ratio_clamp=20.0)


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("policy_gradient_loss", lambda c, s: ((sample_bt(c, s, 0.5, -1.5), c.randn(s.B, dtype=s.dtype),
                                              s.mask()), {}), PADDED, "scalar",
       padded=(0,), diff=(0,),
       variants=({"agg": "token-mean"}, {"agg": "seq-mean-token-mean"},
                 {"agg": "seq-mean-token-sum"}, {"agg": "seq-mean-token-sum-norm"}),
       mutants={"matches-reference": ("pg_sign_flipped", "pg_ignores_agg")}))

register_op(Op("ppo_clip_loss", lambda c, s: ((sample_bt(c, s, 0.3, -1.5), sample_bt(c, s, 0.3, -1.5),
                                       c.randn(s.B, dtype=s.dtype) if s.name == "one_token_rows"
                                       else c.randn(s.B, s.T, dtype=s.dtype), s.mask()), {}),
       PADDED, "scalar", padded=(0, 1, 2), diff=(0,),
       variants=({}, {"clip_low": 0.2, "clip_high": 0.28}, {"dual_clip": 3.0},
                 {"agg": "seq-mean-token-mean"}, {"agg": "seq-mean-token-sum"},
                 {"agg": "seq-mean-token-sum-norm"}),
       mutants={"matches-reference": ("ppo_min_max_swapped", "ppo_clip_high_ignored",
                                      "ppo_ratio_inverted", "ppo_dual_clip_max"),
                "gradient-matches-reference": ("ppo_dual_clip_on_positive_advantages",)}))


# --- invalid input --------------------------------------------------------------------------------
input_check("policy_gradient_loss/rejects-unknown-agg", "agg",
             lambda c: ((rand_bt(c), c.randn(3), M), {"agg": "seq-mean-token-sum"}),
             lambda c: ((rand_bt(c), c.randn(3), M), {"agg": "mean"}),
             "agg is one of the four aggregation modes of the contract")
input_check("policy_gradient_loss/rejects-advantages-of-wrong-shape", "advantages",
             lambda c: ((rand_bt(c), c.randn(3), M), {}), lambda c: ((rand_bt(c), c.randn(4), M), {}),
             "advantages are (B,) or (B, T)")
input_check("ppo_clip_loss/rejects-dual-clip-at-most-one", "dual_clip",
             lambda c: ((rand_bt(c), rand_bt(c), c.randn(3), M), {"dual_clip": 3.0}),
             lambda c: ((rand_bt(c), rand_bt(c), c.randn(3), M), {"dual_clip": 0.8}),
             "dual-clip PPO needs c > 1", ("ppo_accepts_dual_clip_le_one",))


# --- analytic checks ------------------------------------------------------------------------------
PPO = ("Schulman et al. 2017, arXiv:1707.06347, Eq. 7; DAPO arXiv:2503.14476 "
       "Sec. 3.1 (clip-higher); Ye et al. 2020, arXiv:1912.09729, Eq. 5 (dual clip)")


def _per_response(ctx, pol, scores, make_call, sampler=None):
    """Exact E[grad] of a loss called once per response (a batch of one), and the output dtype."""
    tup = pol.tuples(1)
    R = scores[tup.prompt, tup.completion]
    dtypes = []

    def surrogate(batch):
        losses = []
        for k in range(len(tup)):
            out = make_call(k, batch["logp"][k], R[k], batch["mask"][k])
            out = ctx.expect_tensor(out, (), None, "loss")
            dtypes.append(out.dtype)
            losses.append(out.to(F64))
        return torch.stack(losses)
    g = pol.expected_gradient(surrogate, tup, sampler=sampler)
    return g, dtypes[0]


@check("ppo_clip_loss/gradient-zero-when-clipped", kind="gradient",
       section="losses-on-tokens", source=PPO,
       equation="d loss_t / d logp_t = -A r w_t (w_t the aggregation weight, 1/N for "
                "token-mean), except 0 where (A > 0, r > 1 + eps_high), "
                "(A < 0, r < 1 - eps_low) or (dual clip c, A < 0, r > c)",
       hint="take max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) per token (not min), "
            "clip the ratio (not the advantage), use clip_high above 1, and apply the dual-clip "
            "floor -c A only where A < 0",
       mutants=("ppo_min_max_swapped", "ppo_clip_high_ignored",
                "ppo_dual_clip_on_positive_advantages", "ppo_dual_clip_max"))
def ppo_gradient_zero_when_clipped(ctx: Context):
    # ratios on both sides of [0.8, 1.28], both advantage signs, one ratio above the dual clip 2
    ratios = torch.tensor([[1.5, 0.6, 1.25, 2.5], [1.5, 0.6, 0.9, 1.4], [3.0, 0.95, 1.35, 0.7]],
                          dtype=F64)
    adv = torch.tensor([[0.7, 0.7, 0.7, -0.4], [-0.5, -0.5, 1.2, -1.0], [-0.9, 0.3, 0.8, -0.6]],
                       dtype=F64)
    mask = lengths_mask([4, 4, 3], 4)
    for dtype in (F64, F32):
        for clip_high, dual in ((0.28, None), (0.28, 2.0), (None, None)):
            with ctx.variant():
                high = 0.2 if clip_high is None else clip_high
                ctx.on(f"ratio_above_and_below_clip/{str(dtype)[6:]} clip_high={clip_high} dual_clip={dual}")
                old = ctx.randn(3, 4, dtype=dtype, scale=0.3, shift=-1.5)
                logp = (old + ratios.log()).to(dtype).requires_grad_(True)
                A = adv.to(dtype)
                args, kw = ctx.resolve((logp, old, A, mask, 0.2, clip_high, dual, "token-mean"),
                                       {}, about=("clip_high", "dual_clip"))
                loss = ctx.call(*args, **kw)            # agg: one the variant honours
                ctx.expect_tensor(loss, (), dtype, "loss")
                (grad,) = torch.autograd.grad(loss, logp)
                r = ratios.to(dtype)
                clipped = ((A > 0) & (r > 1 + high)) | ((A < 0) & (r < 1 - 0.2))
                if dual is not None:
                    clipped |= (A < 0) & (r > dual)
                w = agg_weights(mask, args[7])
                expected = torch.where(mask & ~clipped, -A * r * w, torch.zeros_like(r))
                ctx.compare(grad, expected, "d loss / d logp",
                            explain="zero exactly where the clipped branch is taken")


@check("ppo_clip_loss/gradient-equals-policy-gradient-at-old-policy", kind="gradient",
       section="losses-on-tokens", source=PPO,
       equation="at logp = old_logp (r = 1): d loss / d logp_t = -A_t w_t, the policy gradient "
                "with the aggregation weights w_t",
       hint="the ratio is exp(logp - old_logp); at r = 1 nothing is clipped",
       mutants=("ppo_ratio_inverted",))
def ppo_gradient_at_old_policy(ctx: Context):
    mask = lengths_mask([3, 1, 4], 4)
    for dtype in (F64, F32):
        ctx.on(f"ratio_one/{str(dtype)[6:]}")
        old = ctx.randn(3, 4, dtype=dtype, shift=-1.0)
        A = ctx.randn(3, dtype=dtype)
        logp = old.clone().requires_grad_(True)
        args, kw = ctx.resolve((logp, old, A, mask, 0.2, 0.28, None, "seq-mean-token-mean"), {})
        (grad,) = torch.autograd.grad(ctx.call(*args, **kw), logp)
        w = agg_weights(mask, args[7])
        ctx.compare(grad, -A.unsqueeze(1) * w, "d loss / d logp at r = 1")


# --- exact checks (every outcome of refimpl.tabular enumerated) ------------------------------------
@check("policy_gradient_loss/exact-policy-gradient-theorem", kind="exact", tol=EXACT,
       section="losses-on-tokens", source="Sutton et al. 1999, Thm. 1; Williams 1992; Liu et al. 2025, arXiv:2503.20783, Sec. 3.1",
       equation="agg='seq-mean-token-sum', A = R(y): E[grad loss] = -grad J exactly; token-mean "
                "weights each response by 1/|y| (the length bias, reported)",
       hint="loss = aggregate(-A * logp); seq-mean-token-sum sums each row's tokens",
       mutants=("pg_sign_flipped", "pg_ignores_agg"),
       derivation="""\
With one response per batch, seq-mean-token-sum gives -R(y) log pi(y), whose expected gradient
is -grad J. token-mean and seq-mean-token-mean give -R(y)/|y| log pi(y): the gradient of
E[R(y)/|y|], a length bias (Dr. GRPO); the note reports its norm ratio and cosine with grad J.""")
def exact_pg(ctx: Context):
    pol, scores = tabular_policy(max_len=2, seed=31)
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    ctx.on("every response agg=seq-mean-token-sum")
    g, dtype = _per_response(ctx, pol, scores, lambda k, lp, A, m: ctx.call(lp, A, m, "seq-mean-token-sum",
                                                                      about=("agg",)))
    ctx.compare(-g, grad_J, "-E[grad loss] vs grad J", dtype=dtype)
    ctx.on("every response agg=token-mean")
    g_tm, dtype = _per_response(ctx, pol, scores, lambda k, lp, A, m: ctx.call(lp, A, m, "token-mean",
                                                                         about=("agg",)))
    lengths = pol.tree.lengths.to(F64)
    ctx.compare(-g_tm, pol.grad_J(pol.scores_to_rewards(scores / lengths)),
                "token-mean: -E[grad loss] vs grad E[R/|y|]", dtype=dtype)
    ctx.note(f"token-mean: |E g| / |grad J| = {float(g_tm.norm() / grad_J.norm()):.6f}, cosine "
             f"{tab.cosine(-g_tm, grad_J):.6f} (length weighting 1/|y|)")


@check("ppo_clip_loss/exact-gradient", kind="exact", tol=EXACT,
       section="losses-on-tokens", source="Schulman et al. 2017, arXiv:1707.06347, Eq. 7",
       equation="at theta = theta_old: E[grad L^CLIP] = -grad J; away from it (responses from "
                "pi_old): E_old[grad L^CLIP] equals refimpl's exact value",
       hint="ratio exp(logp - old_logp); per token max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))",
       mutants=("ppo_ratio_inverted", "ppo_min_max_swapped"),
       derivation="""\
At r = 1 nothing is clipped and grad r = grad log pi, so the surrogate's gradient is the policy
gradient. Off policy, each response from pi_old is weighted by its exact probability under
pi_old, and the adapter's per-response losses are differentiated through logp.""")
def exact_ppo(ctx: Context):
    pol, scores = tabular_policy(max_len=2, seed=31)
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    ctx.on("every response theta=theta_old")
    g, dtype = _per_response(ctx, pol, scores, lambda k, lp, A, m: ctx.call(
        lp, lp.detach(), A, m, 0.2, 0.28, None, "seq-mean-token-sum", about=("agg",)))
    ctx.compare(-g, grad_J, "-E[grad loss] at theta_old vs grad J", dtype=dtype)
    old = tab.TabularPolicy(pol.theta.detach() + 0.6 * torch.randn(
        pol.theta.shape, generator=torch.Generator().manual_seed(5), dtype=F64), 2, 2)
    tup = pol.tuples(1)
    old_lp = old.token_logp().detach()[tup.prompt, tup.completion]

    def call(k, lp, A, m):
        return ctx.call(lp, old_lp[k], A, m, 0.2, 0.28, None, "seq-mean-token-sum", about=("agg",))

    def ref_call(k, lp, A, m):                  # the same options as the adapter was given
        args, kw = ctx.resolve((lp, old_lp[k], A, m, 0.2, 0.28, None, "seq-mean-token-sum"), {},
                               about=("agg",))
        return refimpl.ppo_clip_loss(*args, **kw)
    ctx.on("every response from pi_old, ratios on both sides of the clip range")
    g, dtype = _per_response(ctx, pol, scores, call, sampler=old)
    g_ref, _ = _per_response(ctx, pol, scores, ref_call, sampler=old)
    ctx.compare(g, g_ref, "E_old[grad loss] vs refimpl's", dtype=dtype)


# --- edge cases of the definition -----------------------------------------------------------------
def _token_rows(ctx, ratios, advantages, dtype):
    """One token per row: ``(logp, old_logp, advantages, mask)`` with ``logp`` a leaf,
    ``exp(logp - old_logp)`` the given ratios, (B,) advantages and an all-real (B, 1) mask, so
    that every aggregation mode is the mean over rows and the gradient of row b is -A_b r_b / B
    or 0."""
    old = ctx.randn(len(ratios), 1, dtype=F64, scale=0.3, shift=-1.5)
    logp = (old + torch.tensor(ratios, dtype=F64).log().unsqueeze(1)).to(dtype)
    return (logp.requires_grad_(True), old.to(dtype), torch.tensor(advantages, dtype=dtype),
            torch.ones(len(ratios), 1, dtype=torch.bool))


def _loss_and_grad(ctx, args, kw, dtype, about=(), reference=False):
    """The loss (float64), its gradient with respect to ``logp`` and the loss's dtype, from the
    adapter, or from refimpl in float64 on the very call the adapter was given
    (``reference=True``)."""
    args, kw = ctx.resolve(args, kw, about=about)
    args = [args[0].detach().clone().requires_grad_(True)] + list(args[1:])
    if reference:
        args = [a.detach().to(F64).requires_grad_(i == 0) if isinstance(a, torch.Tensor)
                and a.is_floating_point() else a for i, a in enumerate(args)]
        loss = refimpl.ppo_clip_loss(*args, **kw)
    else:
        loss = ctx.expect_tensor(ctx.call(*args, **kw), (), dtype, "loss")
    (grad,) = torch.autograd.grad(loss, args[0])
    return loss.detach().to(F64), grad, loss.dtype


@check("ppo_clip_loss/dual-clip-inside-clip-range", kind="gradient",
       section="losses-on-tokens", source=PPO,
       equation="per token max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), then min(that, -c A) "
                "where A < 0, for every c > 1, also 1 < c <= 1 + eps_high",
       hint="the dual clip is a floor -c A on the objective of tokens with A < 0; clamping the "
            "ratio at c on every token (a two-sided 'delta' clip) agrees with it only when "
            "c > 1 + clip_high",
       mutants=("ppo_dual_clip_as_ratio_cap", "ppo_dual_clip_on_positive_advantages"))
def ppo_dual_clip_inside_clip_range(ctx: Context):
    # c = 1.1 and 1.25 inside (1, 1 + clip_high], 1.28 on its edge, 3.0 above it; the ratios
    # fall on both sides of each c and of the clip range [0.8, 1.28], for A > 0 and A < 0
    ratios = [0.5, 0.9, 1.05, 1.15, 1.26, 1.5, 4.0] * 2
    adv = [1.0] * 7 + [-1.0] * 7
    rows = "rows: ratios " + ", ".join(map(str, ratios[:7])) + " with A = +1, then with A = -1"
    for dtype in (F64, F32):
        for c in (1.1, 1.25, 1.28, 3.0):
            with ctx.variant():
                ctx.on(f"one_token_rows/{str(dtype)[6:]} clip_high=0.28 dual_clip={c}")
                call = (_token_rows(ctx, ratios, adv, dtype) + (0.2, 0.28, c, "token-mean"), {})
                about = ("clip_high", "dual_clip")
                loss, grad, out = _loss_and_grad(ctx, *call, dtype, about)
                ref_loss, ref_grad, _ = _loss_and_grad(ctx, *call, dtype, about, reference=True)
                ctx.compare(grad, ref_grad, "d loss / d logp", dtype=out, explain=rows)
                ctx.compare(loss, ref_loss, "loss", dtype=out)


@check("ppo_clip_loss/log-ratios-beyond-20", kind="gradient",
       section="losses-on-tokens", source=PPO,
       equation="r = exp(logp - old_logp) for every |logp - old_logp| <= 80 (finite in float64): "
                "no clamp of the log-ratio",
       hint="compute the ratio as exp(logp - old_logp) without clamping the log-ratio: a clamp "
            "at +-20 changes the loss and zeroes the gradient of tokens whose policies drifted "
            "apart, exactly where the unclipped branch is taken (A < 0, r large)",
       mutants=("ppo_log_ratio_clamped",))
def ppo_log_ratios_beyond_20(ctx: Context):
    # one token per call, so that the loss is that token's loss; log-probabilities <= 0 and
    # logp - old_logp = l exactly (integers and halves)
    mask = torch.ones(1, 1, dtype=torch.bool)
    for l in (25.0, 50.0, 80.0, -25.0, -50.0, -80.0):
        for A in (0.5, -0.5):
            with ctx.variant():
                ctx.on(f"one_token/float64 log_ratio={l:g} A={A:g} dual_clip=None")
                logp = torch.tensor([[min(l, 0.0) - 0.5]], dtype=F64)
                old = logp - l
                call = ((logp, old, torch.tensor([A], dtype=F64), mask, 0.2, 0.28, None,
                         "token-mean"), {})
                loss, grad, out = _loss_and_grad(ctx, *call, F64)
                ref_loss, ref_grad, _ = _loss_and_grad(ctx, *call, F64, reference=True)
                # inf or NaN where the contract's value is finite is what this check is about
                ctx.compare(grad, ref_grad, "d loss / d logp", dtype=out, nan_is_failure=True)
                ctx.compare(loss, ref_loss, "loss", dtype=out, nan_is_failure=True)
