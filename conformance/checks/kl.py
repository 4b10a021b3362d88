"""KL estimators and KL reward shaping: ``kl_estimate`` (k1, k2, k3) and ``kl_penalized_rewards``.

Equations and sources: ``refimpl/kl.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

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
from refimpl import tabular as tab


# --- mutants --------------------------------------------------------------------------------------
@mutant("kl_estimate", "k3 with the ratio upside down: exp(l) - 1 - l")
def k3_ratio_inverted(logp, ref_logp, mask=None, kind="k3"):
    if kind != "k3":
        return refimpl.kl_estimate(logp, ref_logp, mask, kind)
    return refimpl.kl_estimate(ref_logp, logp, mask, "k3")


@mutant("kl_estimate", "k3 with the sign of the log term flipped: exp(-l) - 1 - l")
def k3_log_sign_flipped(logp, ref_logp, mask=None, kind="k3"):
    if kind != "k3":
        return refimpl.kl_estimate(logp, ref_logp, mask, kind)
    k1 = refimpl.kl_estimate(logp, ref_logp, mask, "k1")
    return refimpl.kl_estimate(logp, ref_logp, mask, "k3") - 2 * k1


@mutant("kl_estimate", "k2 without the 1/2: l**2")
def k2_missing_half(logp, ref_logp, mask=None, kind="k3"):
    out = refimpl.kl_estimate(logp, ref_logp, mask, kind)
    return 2 * out if kind == "k2" else out


@mutant("kl_estimate", "k1 as ref_logp - logp (the KL ratio inverted)")
def k1_ratio_inverted(logp, ref_logp, mask=None, kind="k3"):
    if kind != "k1":
        return refimpl.kl_estimate(logp, ref_logp, mask, kind)
    return refimpl.kl_estimate(ref_logp, logp, mask, "k1")


@mutant("kl_estimate", "computes exp(-l) on raw inputs and masks afterwards (NaN gradients leak)")
def kl_masks_after_exp(logp, ref_logp, mask=None, kind="k3"):
    l = logp - ref_logp
    k = {"k1": l, "k2": 0.5 * l ** 2, "k3": torch.exp(-l) - 1 + l}[kind]
    if mask is None:
        return k
    m = _checks.bool_mask(mask, logp.shape)
    return zero_pad(k, m)


@mutant("kl_estimate", "returns float32 whatever the input dtype")
def kl_casts_to_float32(logp, ref_logp, mask=None, kind="k3"):
    return refimpl.kl_estimate(logp, ref_logp, mask, kind).float()


@mutant("kl_penalized_rewards", "adds the score at the padded end (column T-1), not at the last "
        "real token")
def score_at_padded_end(scores, logp, ref_logp, mask, beta, kind="k1"):
    m = _checks.bool_mask(mask, logp.shape)
    r = -beta * refimpl.kl_estimate(logp, ref_logp, m, kind)
    r = r.clone()
    r[:, -1] = r[:, -1] + scores
    return r


@mutant("kl_penalized_rewards", "adds the KL instead of subtracting it (+beta * k)")
def kl_reward_sign_flipped(scores, logp, ref_logp, mask, beta, kind="k1"):
    shaped = refimpl.kl_penalized_rewards(scores, logp, ref_logp, mask, 0.0, kind)
    return shaped + beta * refimpl.kl_estimate(logp, ref_logp, mask, kind)


@mutant("kl_estimate", "log-ratio clamped to [-20, 20] before the estimator")
def kl_log_ratio_clamped(logp, ref_logp, mask=None, kind="k3"):
    l = torch.clamp(logp - ref_logp, -20.0, 20.0)
    return refimpl.kl_estimate(ref_logp + l, ref_logp, mask, kind)


@mutant("kl_penalized_rewards", "a negative beta silently taken as |beta|")
def kl_reward_abs_beta(scores, logp, ref_logp, mask, beta, kind="k1"):
    return refimpl.kl_penalized_rewards(scores, logp, ref_logp, mask, abs(beta), kind)


@mutant("kl_penalized_rewards", "a negative beta silently taken as 0 (no penalty)")
def kl_reward_negative_beta_as_zero(scores, logp, ref_logp, mask, beta, kind="k1"):
    return refimpl.kl_penalized_rewards(scores, logp, ref_logp, mask, max(beta, 0.0), kind)


@mutant("kl_penalized_rewards", "beta = 0 taken as unset (`beta or 0.1`)")
def kl_reward_beta_zero_as_default(scores, logp, ref_logp, mask, beta, kind="k1"):
    return refimpl.kl_penalized_rewards(scores, logp, ref_logp, mask, beta or 0.1, kind)


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("kl_penalized_rewards",
       lambda c, s: ((c.randn(s.B, dtype=s.dtype), sample_bt(c, s, 0.5, -1.0), sample_bt(c, s, 0.5, -1.0),
                      s.mask()), {"beta": 0.1}), PADDED, "BT", padded=(1, 2), diff=(1,),
       variants=({"kind": "k1"}, {"kind": "k2"}, {"kind": "k3"}),
       mutants={"matches-reference": ("score_at_padded_end", "kl_reward_sign_flipped")}))

register_op(Op("kl_estimate", lambda c, s: ((sample_bt(c, s, 0.7, -1.0), sample_bt(c, s, 0.7, -1.0), s.mask()), {}),
       PADDED, "BT", padded=(0, 1), diff=(0,),
       variants=({"kind": "k1"}, {"kind": "k2"}, {"kind": "k3"}),
       mutants={"matches-reference": ("k3_ratio_inverted", "k3_log_sign_flipped",
                                      "k2_missing_half", "k1_ratio_inverted"),
                "padding-nan": ("kl_masks_after_exp",), "padding-inf": ("kl_masks_after_exp",),
                "dtype-kept": ("kl_casts_to_float32",)}))


# --- invalid input --------------------------------------------------------------------------------
input_check("kl_estimate/rejects-unknown-kind", "kind",
             lambda c: ((rand_bt(c), rand_bt(c), M), {"kind": "k2"}),
             lambda c: ((rand_bt(c), rand_bt(c), M), {"kind": "k4"}), "kind is one of 'k1', 'k2', 'k3'")
input_check("kl_estimate/rejects-mixed-float-dtypes", "dtype",
             lambda c: ((rand_bt(c), rand_bt(c), M), {}),
             lambda c: ((rand_bt(c), rand_bt(c).float(), M), {}),
             "mixed float dtypes are a ValueError (no silent promotion)")
input_check("kl_penalized_rewards/rejects-row-without-real-token", "mask",
             lambda c: ((c.randn(3), rand_bt(c), rand_bt(c), M), {"beta": 0.1}),
             lambda c: ((c.randn(3), rand_bt(c), rand_bt(c), EMPTY), {"beta": 0.1}),
             "a row with no real token has no last token to carry its score")
input_check("kl_penalized_rewards/rejects-negative-beta", "beta",
             lambda c: ((c.randn(3), rand_bt(c), rand_bt(c), M), {"beta": 0.0}),
             lambda c: ((c.randn(3), rand_bt(c), rand_bt(c), M), {"beta": -0.1}),
             "beta >= 0: a negative KL coefficient rewards drifting away from the reference; "
             "raise ValueError, do not replace it by |beta| or 0",
             ("kl_reward_abs_beta", "kl_reward_negative_beta_as_zero"))


# --- analytic checks ------------------------------------------------------------------------------
def _kl_pair():
    pol, _ = tabular_policy(max_len=2, seed=21)
    ref, _ = tabular_policy(max_len=2, seed=22)
    return pol, ref


def _kl_call(ctx, pol, ref, kind, differentiable=False):
    mask, L = all_rows(pol)
    lp = pol.token_logp()
    lp = lp if differentiable else lp.detach()
    out = ctx.call(lp.reshape(-1, L), ref.token_logp().detach().reshape(-1, L), mask, kind,
                   about=("kind",))
    out = ctx.expect_tensor(out, (mask.shape[0], L), None, f"kl_estimate(kind={kind!r})")
    k = torch.where(mask, out.to(F64), torch.zeros((), dtype=F64)).sum(-1)
    return k.reshape(pol.n_prompts, -1), out.dtype


@check("kl_estimate/k3-nonnegative", kind="property",
       section="kl", source="Schulman 2020, 'Approximating KL Divergence'",
       equation="k3 = exp(-l) - 1 + l >= 0 for every l",
       hint="k3 is exp(-l) - 1 + l with l = logp - ref_logp (note the signs)",
       mutants=("k3_log_sign_flipped",))
def k3_nonnegative(ctx: Context):
    for dtype in (F64, F32):
        ctx.on(f"large_and_tiny_log_ratios/{str(dtype)[6:]}")
        l = torch.tensor([[-8.0, -1.0, -1e-4, 0.0], [1e-4, 0.5, 3.0, 8.0]], dtype=dtype)
        out = ctx.expect_tensor(ctx.call(l - 2.0, torch.full_like(l, -2.0), None, "k3",
                                                  about=("kind",)), (2, 4), dtype)
        ctx.require(bool((out >= 0).all()), f"k3 = {float(out.min()):.6g} < 0 at some log-ratio",
                    actual=float(out.min()), expected=">= 0")


@check("kl_estimate/large-log-ratios", kind="reference",
       section="kl", source="Schulman 2020",
       equation="k1 = l, k2 = l^2 / 2, k3 = exp(-l) - 1 + l at l in {-8, -3, -1e-4, 0, 1e-4, 3, 8}",
       hint="the contract's estimators are not clamped; a clamp (to [-10, 10], say) changes "
            "large-|l| tokens, which are exactly the ones a KL penalty exists for",
       mutants=("k3_ratio_inverted", "k2_missing_half", "kl_estimate~scaled"))
def kl_large_log_ratios(ctx: Context):
    import refimpl
    l = torch.tensor([[-8.0, -3.0, -1e-4, 0.0], [1e-4, 3.0, 8.0, 0.5]], dtype=F64)
    ref = torch.full_like(l, -2.0)
    for kind in ("k1", "k2", "k3"):
        ctx.on(f"large_and_tiny_log_ratios kind={kind}")
        with ctx.variant():
            out = ctx.expect_tensor(ctx.call(ref + l, ref, None, kind, about=("kind",)), (2, 4), F64)
            ctx.compare(out, refimpl.kl_estimate(ref + l, ref, None, kind), f"{kind}")


@check("kl_estimate/log-ratios-beyond-20", kind="reference",
       section="kl", source="Schulman 2020, 'Approximating KL Divergence'",
       equation="k1 = l, k2 = l^2 / 2, k3 = exp(-l) - 1 + l for |l| up to 80 (finite in "
                "float64: exp(80) = 5.5e34); nothing is clamped",
       hint="do not clamp the log-ratio (a clamp at +-20 changes every estimator where the "
            "policy and the reference drifted apart, and zeroes its gradient there)",
       mutants=("kl_log_ratio_clamped",))
def kl_log_ratios_beyond_20(ctx: Context):
    l = torch.tensor([[-80.0, -50.0, -25.0, -20.5], [20.5, 25.0, 50.0, 80.0]], dtype=F64)
    # log-probabilities <= 0 as a model gives them; logp - ref_logp is l exactly
    logp = torch.where(l < 0, l - 0.5, torch.full_like(l, -0.5))
    ref = logp - l
    for kind in ("k1", "k2", "k3"):
        ctx.on(f"log_ratios_beyond_20/float64 kind={kind}")
        with ctx.variant():
            out = ctx.expect_tensor(ctx.call(logp, ref, None, kind, about=("kind",)), (2, 4), F64)
            ctx.compare(out, refimpl.kl_estimate(logp, ref, None, kind), kind, nan_is_failure=True,
                        explain="l = " + ", ".join(f"{x:g}" for x in l.flatten().tolist()))


@check("kl_penalized_rewards/beta-zero-leaves-scores", kind="reference",
       section="returns-and-advantages", source="Ziegler et al. 2019, arXiv:1909.08593, Sec. 2; "
              "docs/contract.md, 'Invalid arguments' (beta = 0 is valid)",
       equation="beta = 0: r_t = 0 on real tokens before the last, r_T = score at each row's last "
                "real token, 0 at padding",
       hint="beta = 0 is a valid coefficient (no penalty): do not treat it as unset and replace "
            "it by a default",
       mutants=("kl_reward_beta_zero_as_default",))
def kl_reward_beta_zero(ctx: Context):
    mask = lengths_mask([3, 1, 4], 4)
    for kind in ("k1", "k3"):
        ctx.on(f"unequal_lengths/float64 beta=0 kind={kind}")
        with ctx.variant():
            scores = ctx.randn(3)
            logp = zero_pad(ctx.randn(3, 4, shift=-1.0), mask)
            ref = zero_pad(ctx.randn(3, 4, shift=-1.0), mask)
            out = ctx.expect_tensor(ctx.call(scores, logp, ref, mask, 0.0, kind, about=("kind",), valid_edge="beta = 0"),
                                    (3, 4), F64)
            last = mask.sum(1, keepdim=True) - 1
            expected = torch.where(torch.arange(4).unsqueeze(0) == last, scores.unsqueeze(1),
                                   torch.zeros(3, 4, dtype=F64))
            ctx.compare(torch.where(mask, out.to(F64), torch.zeros((), dtype=F64)),
                        torch.where(mask, expected, torch.zeros((), dtype=F64)),
                        "shaped rewards at beta = 0 (real tokens)", dtype=out.dtype)


# --- exact checks (every outcome of refimpl.tabular enumerated) ------------------------------------
@check("kl_estimate/exact-expectations", kind="exact", tol=EXACT,
       section="kl", source="Schulman 2020, 'Approximating KL Divergence' (k1, k2, k3)",
       equation="E_pi[sum_t k1] = E_pi[sum_t k3] = KL(pi || pi_ref); E_pi[sum_t k2] = "
                "E_pi[sum_t l_t^2 / 2]",
       hint="k1 = l, k2 = l^2 / 2, k3 = exp(-l) - 1 + l with l = logp - ref_logp",
       mutants=("k3_ratio_inverted", "k1_ratio_inverted", "k2_missing_half", "k3_log_sign_flipped"),
       derivation="""\
E_{a~pi}[exp(-l) - 1] = sum_a pi(a) ref(a)/pi(a) - 1 = 0, so E[k3] = E[k1] = E[l] = KL per
token; summed along the response (chain rule of KL) this is the sequence KL. k2 is biased:
its exact expectation is reported beside the KL.""")
def exact_kl_expectations(ctx: Context):
    pol, ref = _kl_pair()
    p = pol.probs().detach()
    kl = pol.kl(ref).detach()
    l = pol.token_logp().detach() - ref.token_logp().detach()
    k2_exact = (p * (0.5 * l ** 2).sum(-1)).sum(1)
    values = {}
    for kind, truth in (("k1", kl), ("k3", kl), ("k2", k2_exact)):
        with ctx.variant():
            ctx.on(f"every response kind={kind}")
            k, dtype = _kl_call(ctx, pol, ref, kind)
            e = (p * k).sum(1)
            values[kind] = e
            ctx.compare(e, truth, f"E[sum_t {kind}] per prompt", dtype=dtype)
    ctx.note(f"KL = {[round(float(x), 6) for x in kl]}; " + ", ".join(
        f"E[{k}] = {[round(float(x), 6) for x in v]}" for k, v in sorted(values.items())))


@check("kl_estimate/exact-loss-gradients", kind="exact", tol=EXACT,
       section="kl", source="Tang & Munos 2025, arXiv:2506.09477; Liu et al. 2025, arXiv:2510.01555",
       equation="as a loss term on tokens from pi: E[grad k1] = 0; E[grad k2] = sum_s d(s) grad "
                "KL(pi(.|s) || ref(.|s)); E[grad k3] = sum_s d(s) grad KL(ref(.|s) || pi(.|s))",
       hint="the gradient must flow through logp only (ref_logp is fixed); k3's derivative is "
            "1 - exp(-l)",
       mutants=("k3_ratio_inverted", "k2_missing_half"),
       derivation="""\
grad k1 = grad log pi: zero mean under pi. grad k2 = l grad log pi: the per-state gradient of
KL(pi || ref) with the state distribution held fixed. grad k3 = (1 - ref/pi) grad log pi, whose
mean is -sum_a ref(a) grad log pi(a) = grad KL(ref || pi): the *forward* KL. None of the three
is the gradient of the sequence-level KL(pi || ref) (the note gives the cosines); k1 used as a
reward (score function) is.""")
def exact_kl_gradients(ctx: Context):
    pol, ref = _kl_pair()
    w = pol.prompt_weights
    true_grad = pol.grad((w * pol.kl(ref)).sum())
    d = pol.state_visitation().detach()
    frozen = {False: pol.grad((w.unsqueeze(1) * d * pol.state_kl(ref)).sum()),
              True: pol.grad((w.unsqueeze(1) * d * pol.state_kl(ref, reverse=True)).sum())}
    cosines = []
    for kind, truth in (("k1", torch.zeros_like(true_grad)), ("k2", frozen[False]), ("k3", frozen[True])):
        with ctx.variant():
            ctx.on(f"every response kind={kind}")
            k, dtype = _kl_call(ctx, pol, ref, kind, differentiable=True)
            g = pol.grad((w.unsqueeze(1) * pol.probs().detach() * k).sum())
            if kind != "k1":
                cosines.append(f"{kind}: cosine with grad KL(pi||ref) {tab.cosine(g, true_grad):.6f}")
            ctx.compare(g, truth, f"E[grad sum_t {kind}]", dtype=dtype)
    ctx.note("k1 gives 0; " + "; ".join(cosines))


@check("kl_penalized_rewards/exact-shaped-return", kind="exact", tol=EXACT,
       section="returns-and-advantages", source="Ziegler et al. 2019, arXiv:1909.08593, Sec. 2",
       equation="E_pi[sum_t r_t] = E_pi[score] - beta KL(pi || pi_ref) with kind='k1'",
       hint="-beta k on every real token and the score added once, at each row's last real token",
       mutants=("kl_reward_sign_flipped", "score_at_padded_end"),
       derivation="""\
sum_t r_t = score - beta sum_t l_t, and E_pi[sum_t l_t] = KL(pi || pi_ref) (chain rule).""")
def exact_shaped_return(ctx: Context):
    pol, ref = _kl_pair()
    _, scores = tabular_policy(max_len=2, seed=23)
    mask, L = all_rows(pol)
    beta = 0.3
    ctx.on("every response beta=0.3")
    out = ctx.call(scores.reshape(-1), pol.token_logp().detach().reshape(-1, L),
                   ref.token_logp().detach().reshape(-1, L), mask, beta, "k1", about=("kind",))
    out = ctx.expect_tensor(out, (mask.shape[0], L), None)
    ret = torch.where(mask, out.to(F64), torch.zeros((), dtype=F64)).sum(-1).reshape(pol.n_prompts, -1)
    p = pol.probs().detach()
    ctx.compare((p * ret).sum(1), (p * scores).sum(1) - beta * pol.kl(ref).detach(),
                "E[shaped return] per prompt", dtype=out.dtype)
