"""Preference losses: ``bradley_terry_loss``, ``dpo_loss`` (with label smoothing) and ``ipo_loss``.

Equations and sources: ``refimpl/preferences.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

import refimpl
from conformance.checks.templates import (
    F32,
    F64,
    MINIMISER,
    PAIRS,
    Op,
    golden_min,
    input_check,
    mutant,
    pair_logps,
    register_op,
)
from conformance.context import Context
from conformance.registry import check


# --- mutants --------------------------------------------------------------------------------------
@mutant("dpo_loss", "label smoothing swapped: -ls log sigmoid(z) - (1 - ls) log sigmoid(-z)")
def dpo_smoothing_swapped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    return refimpl.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, beta, 1.0 - label_smoothing)


@mutant("dpo_loss", "forgets the reference model: z = beta (pc - pr)")
def dpo_ignores_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    return refimpl.dpo_loss(policy_chosen_logps, policy_rejected_logps,
                            torch.zeros_like(ref_chosen_logps), torch.zeros_like(ref_rejected_logps),
                            beta, label_smoothing)


@mutant("dpo_loss", "chosen and rejected swapped (the sign of z flipped)")
def dpo_sign_flipped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                     ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    return refimpl.dpo_loss(policy_rejected_logps, policy_chosen_logps, ref_rejected_logps,
                            ref_chosen_logps, beta, label_smoothing)


@mutant("dpo_loss", "accepts beta <= 0 without complaint")
def dpo_accepts_nonpositive_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    if beta <= 0:
        h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
        return -F.logsigmoid(beta * h)
    return refimpl.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, beta, label_smoothing)


@mutant("ipo_loss", "target 1/tau instead of 1/(2 tau)")
def ipo_tau_not_halved(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                       ref_rejected_logps, tau=0.1):
    return refimpl.ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, tau / 2)


@mutant("bradley_terry_loss", "margin added instead of subtracted")
def bt_margin_sign(chosen_rewards, rejected_rewards, margin=None):
    if margin is None:
        return refimpl.bradley_terry_loss(chosen_rewards, rejected_rewards)
    return refimpl.bradley_terry_loss(chosen_rewards, rejected_rewards, -margin)


@mutant("bradley_terry_loss", "chosen and rejected swapped")
def bt_sign_flipped(chosen_rewards, rejected_rewards, margin=None):
    return refimpl.bradley_terry_loss(rejected_rewards, chosen_rewards, margin)


def _naive_nll(x):
    """-log(sigmoid(x)) as written: sigmoid(-100) is 0 in float32, and its log -inf."""
    return -torch.log(torch.sigmoid(x))


@mutant("dpo_loss", "-log(sigmoid(z)) computed naively (inf and NaN gradients at large |z| in "
        "float32)")
def dpo_naive_log_sigmoid(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    refimpl.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                     ref_rejected_logps, beta, label_smoothing)              # its validation
    z = beta * ((policy_chosen_logps - ref_chosen_logps)
                - (policy_rejected_logps - ref_rejected_logps))
    return (1.0 - label_smoothing) * _naive_nll(z) + label_smoothing * _naive_nll(-z)


@mutant("bradley_terry_loss", "-log(sigmoid(r_c - r_r - m)) computed naively (inf at large gaps "
        "in float32)")
def bt_naive_log_sigmoid(chosen_rewards, rejected_rewards, margin=None):
    refimpl.bradley_terry_loss(chosen_rewards, rejected_rewards, margin)      # its validation
    return _naive_nll(chosen_rewards - rejected_rewards - (0.0 if margin is None else margin))


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("bradley_terry_loss", lambda c, s: ((c.randn(6, dtype=s.dtype), c.randn(6, dtype=s.dtype)), {}),
       PAIRS, "N", diff=(0, 1), variants=({}, {"margin": 0.5}),
       mutants={"matches-reference": ("bt_margin_sign", "bt_sign_flipped")}))

register_op(Op("dpo_loss", lambda c, s: (pair_logps(c, s), {}), PAIRS, "N", diff=(0, 1),
       variants=({"beta": 0.1}, {"beta": 0.5, "label_smoothing": 0.1}),
       mutants={"matches-reference": ("dpo_smoothing_swapped", "dpo_ignores_reference",
                                      "dpo_sign_flipped")}))

register_op(Op("ipo_loss", lambda c, s: (pair_logps(c, s), {}), PAIRS, "N", diff=(0, 1),
       variants=({"tau": 0.1}, {"tau": 1.0}),
       mutants={"matches-reference": ("ipo_tau_not_halved",)}))


# --- invalid input --------------------------------------------------------------------------------
input_check("dpo_loss/rejects-nonpositive-beta", "beta",
             lambda c: (tuple(c.randn(4) for _ in range(4)), {"beta": 0.1}),
             lambda c: (tuple(c.randn(4) for _ in range(4)), {"beta": 0.0}),
             "beta > 0", ("dpo_accepts_nonpositive_beta",))
input_check("ipo_loss/rejects-nonpositive-tau", "tau",
             lambda c: (tuple(c.randn(4) for _ in range(4)), {"tau": 0.1}),
             lambda c: (tuple(c.randn(4) for _ in range(4)), {"tau": -1.0}), "tau > 0")
input_check("bradley_terry_loss/rejects-shape-mismatch", "rejected_rewards",
             lambda c: ((c.randn(4), c.randn(4)), {}), lambda c: ((c.randn(4), c.randn(5)), {}),
             "chosen and rejected rewards are both (N,)")


# --- analytic checks ------------------------------------------------------------------------------
@check("dpo_loss/log2-at-zero-margin", kind="reference",
       section="preferences", source="Rafailov et al. 2023, arXiv:2305.18290, Eq. 7",
       equation="z = beta ((pc - rc) - (pr - rr)) = 0  =>  loss = log 2",
       hint="the margin subtracts the reference log-ratios: z = beta ((pc - rc) - (pr - rr))",
       mutants=("dpo_ignores_reference",))
def dpo_log2(ctx: Context):
    for dtype in (F64, F32):
        ctx.on(f"zero_margin/{str(dtype)[6:]}")
        pc, rc = ctx.randn(4, dtype=dtype, shift=-5), ctx.randn(4, dtype=dtype, shift=-5)
        pr = ctx.randn(4, dtype=dtype, shift=-5)
        rr = pr - (pc - rc)                                   # h = 0
        out = ctx.expect_tensor(ctx.call(pc, pr, rc, rr, 0.3, 0.2), (4,), dtype)
        ctx.compare(out, torch.full((4,), math.log(2), dtype=F64), "loss at z = 0")


@check("dpo_loss/gradient-weight-beta-sigmoid", kind="gradient",
       section="preferences", source="Rafailov et al. 2023, arXiv:2305.18290, Sec. 4 (the DPO update)",
       equation="d loss / d pc = -beta sigmoid(-z), d loss / d pr = +beta sigmoid(-z)",
       hint="loss = -log sigmoid(z) with z = beta * margin; chosen and rejected must not be swapped",
       mutants=("dpo_sign_flipped", "dpo_ignores_reference"))
def dpo_gradient(ctx: Context):
    for dtype in (F64, F32):
        ctx.on(f"pairs/{str(dtype)[6:]}")
        pc, pr, rc, rr = (ctx.randn(5, dtype=dtype, scale=2.0, shift=-8) for _ in range(4))
        pc, pr = pc.requires_grad_(True), pr.requires_grad_(True)
        out = ctx.expect_tensor(ctx.call(pc, pr, rc, rr, 0.5, 0.0), (5,), dtype)
        g_c, g_r = torch.autograd.grad(out.sum(), (pc, pr))
        z = 0.5 * ((pc - rc) - (pr - rr)).detach()
        ctx.compare(g_c, -0.5 * torch.sigmoid(-z), "d loss / d policy_chosen_logps")
        ctx.compare(g_r, 0.5 * torch.sigmoid(-z), "d loss / d policy_rejected_logps")


@check("bradley_terry_loss/gradient-is-sigmoid-minus-one", kind="gradient",
       section="preferences", source="Ouyang et al. 2022, arXiv:2203.02155, Eq. 1; Touvron et "
              "al. 2023, arXiv:2307.09288, Eq. 2 (margin)",
       equation="d loss / d r_c = sigmoid(r_c - r_r - m) - 1",
       hint="loss = -log sigmoid(r_c - r_r - m): subtract the margin",
       mutants=("bt_margin_sign", "bt_sign_flipped"))
def bt_gradient(ctx: Context):
    for dtype in (F64, F32):
        for margin in (None, 0.7, "tensor"):
            with ctx.variant():
                ctx.on(f"pairs/{str(dtype)[6:]} margin={margin}")
                c, r = ctx.randn(5, dtype=dtype).requires_grad_(True), ctx.randn(5, dtype=dtype)
                m = ctx.randn(5, dtype=dtype) if margin == "tensor" else margin
                out = ctx.expect_tensor(ctx.call(c, r, m, about=("margin",)), (5,), dtype)
                (g,) = torch.autograd.grad(out.sum(), c)
                mm = 0.0 if m is None else m
                ctx.compare(g, torch.sigmoid(c.detach() - r - mm) - 1, "d loss / d chosen_rewards")


# --- large reward gaps in float32 ----------------------------------------------------------------
GAPS = (100.0, -100.0, 20.0, -20.0)     # the reward gap (z for DPO, r_c - r_r for BT, h for IPO)
GAP_HINT = ("compute -log sigmoid(x) as softplus(-x) (F.logsigmoid): sigmoid(-100) underflows to 0 "
            "in float32, and -log(0) is inf with a NaN gradient")


def _pair_logps_with_margin(h, dtype):
    """pc, pr, rc, rr (log-probabilities <= 0, as sums over a sequence) with
    (pc - rc) - (pr - rr) = h exactly: |h| <= 1000 is exact in float32."""
    h = torch.tensor(h, dtype=F64)
    pc = torch.where(h >= 0, torch.full_like(h, -5.0), h - 5.0)
    rc = pc - h
    pr, rr = torch.full_like(h, -20.0), torch.full_like(h, -20.0)
    return [x.to(dtype) for x in (pc, pr, rc, rr)]


def _against_reference(ctx, reference, args, kw, diff, what):
    """The adapter's loss and its gradients with respect to the inputs ``diff`` equal refimpl's
    (computed in float64 from the same float32 values); non-finite ones are a failure."""
    args, kw = ctx.resolve(args, kw)
    args = [a.detach().clone().requires_grad_(i in diff) if isinstance(a, torch.Tensor) else a
            for i, a in enumerate(args)]
    out = ctx.expect_tensor(ctx.call(*args, **kw), (len(args[0]),), F32, what)
    grads = torch.autograd.grad(out.sum(), [args[i] for i in diff])
    ref_args = [a.detach().to(F64).requires_grad_(i in diff) if isinstance(a, torch.Tensor) else a
                for i, a in enumerate(args)]
    ref = reference(*ref_args, **kw)
    ref_grads = torch.autograd.grad(ref.sum(), [ref_args[i] for i in diff])
    names = list(inspect.signature(reference).parameters)
    for i, g, rg in zip(diff, grads, ref_grads):
        ctx.compare(g, rg, f"d {what} / d {names[i]}", nan_is_failure=True, dtype=out.dtype)
    ctx.compare(out, ref, what, nan_is_failure=True)


@check("dpo_loss/large-gap-float32", kind="gradient",
       section="preferences", source="Rafailov et al. 2023, arXiv:2305.18290, Eq. 7; "
              "Mitchell 2023, cDPO note, Eq. 3",
       equation="z = beta ((pc - rc) - (pr - rr)) = +-100, +-20 in float32: loss = "
                "(1 - ls) softplus(-z) + ls softplus(z), finite, and its gradient finite",
       hint=GAP_HINT, mutants=("dpo_naive_log_sigmoid",))
def dpo_large_gap(ctx: Context):
    h = [10.0 * z for z in GAPS]                                  # beta = 0.1
    for ls in (0.0, 0.1):
        with ctx.variant():
            ctx.on(f"large_gaps/float32 beta=0.1 label_smoothing={ls} z={list(GAPS)}")
            args = (*_pair_logps_with_margin(h, F32), 0.1, ls)
            if ls:
                ctx.resolve(args, {}, about=("label_smoothing",))    # skip if not honoured
            _against_reference(ctx, refimpl.dpo_loss, args, {}, (0, 1), "loss")


@check("ipo_loss/large-gap-float32", kind="gradient",
       section="preferences", source="Azar et al. 2024, arXiv:2310.12036v2, Eq. 17",
       equation="h = (pc - rc) - (pr - rr) = +-100, +-20 in float32: loss = (h - 1/(2 tau))^2 "
                "and its gradient, finite",
       hint="(h - 1/(2 tau))^2 with h the margin of the log-ratios; nothing overflows at |h| = 100",
       mutants=("ipo_tau_not_halved",))
def ipo_large_gap(ctx: Context):
    ctx.on(f"large_gaps/float32 tau=0.1 h={list(GAPS)}")
    args = (*_pair_logps_with_margin(list(GAPS), F32), 0.1)
    _against_reference(ctx, refimpl.ipo_loss, args, {}, (0, 1), "loss")


@check("bradley_terry_loss/large-gap-float32", kind="gradient",
       section="preferences", source="Ouyang et al. 2022, arXiv:2203.02155, Eq. 1",
       equation="r_c - r_r = +-100, +-20 in float32: loss = softplus(-(r_c - r_r)), finite, and "
                "its gradient sigmoid(r_c - r_r) - 1, finite",
       hint=GAP_HINT, mutants=("bt_naive_log_sigmoid",))
def bt_large_gap(ctx: Context):
    ctx.on(f"large_gaps/float32 r_c - r_r={list(GAPS)}")
    gap = torch.tensor(GAPS, dtype=F64)
    chosen, rejected = (gap / 2).to(F32), (-gap / 2).to(F32)
    _against_reference(ctx, refimpl.bradley_terry_loss, (chosen, rejected), {}, (0, 1), "loss")


# --- exact checks (every outcome of refimpl.tabular enumerated) ------------------------------------
@check("dpo_loss/exact-minimiser-with-label-smoothing", kind="exact", tol=MINIMISER,
       section="preferences", source="Mitchell 2023, cDPO note, Eq. 3; Rafailov et al. 2023, arXiv:2305.18290, Eq. 7",
       equation="label smoothing eps: the per-pair loss is minimised at z* = log((1 - eps) / eps)",
       hint="loss = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z); smoothing weights the "
            "*reversed* preference by eps",
       mutants=("dpo_smoothing_swapped", "dpo_sign_flipped"),
       derivation="""\
d/dz [-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)] = sigmoid(z) - (1 - eps) = 0 at
sigmoid(z*) = 1 - eps. The minimiser is found from the adapter's loss by golden-section search
over the policy's chosen log-prob, with beta = 1 so that z = h.""")
def exact_dpo(ctx: Context):
    for eps in (0.1, 0.25):
        ctx.on(f"one pair label_smoothing={eps}")
        zero = torch.zeros(1, dtype=F64)

        def f(z):
            out = ctx.call(torch.tensor([z], dtype=F64), zero, zero, zero, 1.0, eps,
                           about=("label_smoothing",))
            return float(ctx.expect_tensor(out, (1,), None)[0])
        z_star = golden_min(f, -20.0, 20.0)
        truth = math.log((1 - eps) / eps)
        ctx.compare(torch.tensor(z_star), torch.tensor(truth), f"minimiser z* (eps = {eps})",
                    explain=f"found {z_star:.6f}, expected log((1-eps)/eps) = {truth:.6f}")
    ctx.note("z* = log 9 = 2.197225 (eps = 0.1) and log 3 = 1.098612 (eps = 0.25) recovered")


@check("ipo_loss/exact-minimiser", kind="exact", tol=MINIMISER,
       section="preferences", source="Azar et al. 2024, arXiv:2310.12036v2, Eq. 17",
       equation="the per-pair loss (h - 1/(2 tau))^2 is minimised at h* = 1/(2 tau)",
       hint="the target margin is 1/(2 tau), not 1/tau", mutants=("ipo_tau_not_halved",),
       derivation="The IPO loss is a square centred at 1/(2 tau); found by golden-section search.")
def exact_ipo(ctx: Context):
    for tau in (0.1, 0.5):
        ctx.on(f"one pair tau={tau}")
        zero = torch.zeros(1, dtype=F64)

        def f(h):
            return float(ctx.expect_tensor(ctx.call(torch.tensor([h], dtype=F64), zero, zero, zero,
                                                    tau), (1,), None)[0])
        h_star = golden_min(f, -20.0, 20.0)
        ctx.compare(torch.tensor(h_star), torch.tensor(1 / (2 * tau)), f"minimiser h* (tau = {tau})",
                    explain=f"found {h_star:.6f}, expected 1/(2 tau) = {1 / (2 * tau):.6f}")


@check("bradley_terry_loss/exact-preference-probability-recovered", kind="exact", tol=MINIMISER,
       section="preferences", source="Bradley & Terry 1952; Ouyang et al. 2022, arXiv:2203.02155, Eq. 1",
       equation="if y_1 beats y_2 with probability p, the expected loss p l(d) + (1 - p) l(-d) is "
                "minimised where sigmoid(d*) = p",
       hint="loss = -log sigmoid(r_chosen - r_rejected): chosen first",
       mutants=("bt_sign_flipped",),
       derivation="""\
d/dd [-p log sigmoid(d) - (1 - p) log sigmoid(-d)] = sigmoid(d) - p: the reward difference that
minimises the expected loss is the log-odds of the true preference probability.""")
def exact_bt(ctx: Context):
    for p in (0.3, 0.8):
        ctx.on(f"one pair p={p}")
        zero = torch.zeros(1, dtype=F64)

        def f(d):
            x = torch.tensor([d], dtype=F64)
            won = ctx.expect_tensor(ctx.call(x, zero), (1,), None)[0]
            lost = ctx.expect_tensor(ctx.call(zero, x), (1,), None)[0]
            return float(p * won + (1 - p) * lost)
        d_star = golden_min(f, -20.0, 20.0)
        recovered = 1 / (1 + math.exp(-d_star))
        ctx.compare(torch.tensor(recovered), torch.tensor(p), f"sigmoid(d*) (p = {p})",
                    explain=f"recovered {recovered:.6f}, expected {p}")
