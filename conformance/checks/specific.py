"""Hand-written checks: invalid input that must be rejected, and analytic properties of single
estimators (clip-gradient zeroing, per-group statistics, permutation, DPO's gradient weight)."""

from __future__ import annotations

import math

import torch

from conformance import Unsupported
from conformance.core import AdapterMisbehaved, CheckFailed, Context, check
from conformance.ops import F32, F64

ACCEPTED = "API.md Conventions: invalid arguments raise ValueError naming the argument"


def _mask(lengths, T):
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# --- input checks ---------------------------------------------------------------------------------

def _rejects(ctx: Context, control: tuple, bad: tuple, argument: str):
    """The control call must succeed; the bad call must raise (ValueError naming ``argument``
    passes clean; another exception passes with a note; a silent number fails)."""
    ctx.on("control (valid input)")
    args, kwargs = control
    ctx.call(*args, **kwargs)
    ctx.on(f"invalid {argument}")
    args, kwargs = bad
    try:
        out = ctx.fn(*args, **kwargs)
    except Unsupported:
        raise
    except ValueError as exc:
        if argument not in str(exc):
            ctx.note(f"ValueError raised, but its message does not name {argument!r}: {exc}")
        return
    except Exception as exc:                                          # noqa: BLE001
        ctx.note(f"rejected with {type(exc).__name__} (ValueError preferred): {exc}")
        return
    kind = type(out).__name__
    raise CheckFailed(f"invalid {argument} was accepted and answered with a {kind}; it should "
                      "raise ValueError", sample=ctx.sample)


def _input_check(id, argument, control, bad, hint, mutants=(), clause=ACCEPTED):
    @check(id, kind="input", clause=clause, equation=f"{argument} invalid -> ValueError", hint=hint,
           mutants=tuple(mutants) + (id.split("/")[0] + "~swallows_errors",))
    def body(ctx: Context):
        _rejects(ctx, control(ctx), bad(ctx), argument)
    return body


def _bt(ctx, B=3, T=4):
    return ctx.randn(B, T)


M = _mask([3, 1, 2], 4)
HOLE = torch.tensor([[True, False, True, False], [True, True, False, False], [True, False, False, False]])
EMPTY = torch.tensor([[True, True, False, False], [False, False, False, False], [True, False, False, False]])

_input_check("gae/rejects-lam-outside-unit-interval", "lam",
             lambda c: ((_bt(c), _bt(c), M), {"lam": 0.95}),
             lambda c: ((_bt(c), _bt(c), M), {"lam": 1.5}),
             "check 0 <= lam <= 1 and raise ValueError('lam ...')", ("gae_accepts_any_lambda",))
_input_check("gae/rejects-row-without-real-token", "mask",
             lambda c: ((_bt(c), _bt(c), M), {}), lambda c: ((_bt(c), _bt(c), EMPTY), {}),
             "a row with no real token has no last token to end the episode: raise ValueError")
_input_check("discounted_returns/rejects-gamma-outside-unit-interval", "gamma",
             lambda c: ((_bt(c), M), {"gamma": 0.9}), lambda c: ((_bt(c), M), {"gamma": -0.1}),
             "check 0 <= gamma <= 1")
_input_check("discounted_returns/rejects-integer-rewards", "rewards",
             lambda c: ((_bt(c), M), {}), lambda c: ((torch.ones(3, 4, dtype=torch.int64), M), {}),
             "integer rewards are a ValueError, not a silent integer result")
_input_check("group_normalized_advantages/rejects-group-of-one", "group_ids",
             lambda c: ((c.randn(4), torch.tensor([0, 0, 1, 1])), {"scale": "none"}),
             lambda c: ((c.randn(3), torch.tensor([0, 0, 1])), {"scale": "none"}),
             "a group of one has no statistic: raise ValueError for every scale",
             ("group_accepts_singleton",))
_input_check("group_normalized_advantages/rejects-unknown-scale", "scale",
             lambda c: ((c.randn(4), torch.tensor([0, 0, 1, 1])), {"scale": "batch"}),
             lambda c: ((c.randn(4), torch.tensor([0, 0, 1, 1])), {"scale": "global"}),
             "scale is one of 'group', 'batch', 'none'")
_input_check("leave_one_out_advantages/rejects-group-of-one", "group_ids",
             lambda c: ((c.randn(4), torch.tensor([3, 3, 1, 1])), {}),
             lambda c: ((c.randn(3), torch.tensor([3, 3, 1])), {}),
             "the leave-one-out baseline of a group of one is a mean over nothing")
_input_check("batch_normalized_advantages/rejects-fewer-than-two-real-entries", "advantages",
             lambda c: ((c.randn(2, 2), _mask([1, 1], 2)), {}),
             lambda c: ((c.randn(1, 2), _mask([1], 2)), {}),
             "an unbiased variance needs at least two entries")
_input_check("kl_estimate/rejects-unknown-kind", "kind",
             lambda c: ((_bt(c), _bt(c), M), {"kind": "k2"}),
             lambda c: ((_bt(c), _bt(c), M), {"kind": "k4"}), "kind is one of 'k1', 'k2', 'k3'")
_input_check("kl_estimate/rejects-mixed-float-dtypes", "dtype",
             lambda c: ((_bt(c), _bt(c), M), {}),
             lambda c: ((_bt(c), _bt(c).float(), M), {}),
             "mixed float dtypes are a ValueError (no silent promotion)")
_input_check("kl_penalized_rewards/rejects-row-without-real-token", "mask",
             lambda c: ((c.randn(3), _bt(c), _bt(c), M), {"beta": 0.1}),
             lambda c: ((c.randn(3), _bt(c), _bt(c), EMPTY), {"beta": 0.1}),
             "a row with no real token has no last token to carry its score")
_input_check("aggregate/rejects-mask-with-hole", "mask",
             lambda c: ((_bt(c), M), {}), lambda c: ((_bt(c), HOLE), {}),
             "the real tokens of a row are a prefix: a mask with a hole is a ValueError",
             ("aggregate_accepts_holes",))
_input_check("aggregate/rejects-unknown-mode", "mode",
             lambda c: ((_bt(c), M), {"mode": "token-mean"}),
             lambda c: ((_bt(c), M), {"mode": "sequence-mean"}),
             "mode is one of the four API.md aggregation modes")
_input_check("policy_gradient_loss/rejects-unknown-agg", "agg",
             lambda c: ((_bt(c), c.randn(3), M), {"agg": "seq-mean-token-sum"}),
             lambda c: ((_bt(c), c.randn(3), M), {"agg": "mean"}),
             "agg is one of the four API.md aggregation modes")
_input_check("policy_gradient_loss/rejects-advantages-of-wrong-shape", "advantages",
             lambda c: ((_bt(c), c.randn(3), M), {}), lambda c: ((_bt(c), c.randn(4), M), {}),
             "advantages are (B,) or (B, T)")
_input_check("ppo_clip_loss/rejects-dual-clip-at-most-one", "dual_clip",
             lambda c: ((_bt(c), _bt(c), c.randn(3), M), {"dual_clip": 3.0}),
             lambda c: ((_bt(c), _bt(c), c.randn(3), M), {"dual_clip": 0.8}),
             "dual-clip PPO needs c > 1", ("ppo_accepts_dual_clip_le_one",))
_input_check("value_loss/rejects-shape-mismatch", "old_values",
             lambda c: ((_bt(c), _bt(c), _bt(c), M), {}),
             lambda c: ((_bt(c), c.randn(3, 5), _bt(c), M), {}), "values, old_values and returns share (B, T)")
_input_check("dpo_loss/rejects-nonpositive-beta", "beta",
             lambda c: (tuple(c.randn(4) for _ in range(4)), {"beta": 0.1}),
             lambda c: (tuple(c.randn(4) for _ in range(4)), {"beta": 0.0}),
             "beta > 0", ("dpo_accepts_nonpositive_beta",))
_input_check("ipo_loss/rejects-nonpositive-tau", "tau",
             lambda c: (tuple(c.randn(4) for _ in range(4)), {"tau": 0.1}),
             lambda c: (tuple(c.randn(4) for _ in range(4)), {"tau": -1.0}), "tau > 0")
_input_check("bradley_terry_loss/rejects-shape-mismatch", "rejected_rewards",
             lambda c: ((c.randn(4), c.randn(4)), {}), lambda c: ((c.randn(4), c.randn(5)), {}),
             "chosen and rejected rewards are both (N,)")
_input_check("token_logprobs/rejects-tokens-out-of-range", "tokens",
             lambda c: ((c.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.int64)), {}),
             lambda c: ((c.randn(2, 3, 4), torch.full((2, 3), 4, dtype=torch.int64)), {}),
             "token ids lie in [0, V)")
_input_check("sequence_logprob/rejects-row-without-real-token", "mask",
             lambda c: ((_bt(c), M), {}), lambda c: ((_bt(c), EMPTY), {}),
             "a row with no real token is a ValueError")


# --- analytic checks ------------------------------------------------------------------------------

PPO = ("API.md ppo_clip_loss; Schulman et al. 2017, arXiv:1707.06347, Eq. 7; DAPO arXiv:2503.14476 "
       "Sec. 3.1 (clip-higher); Ye et al. 2020, arXiv:1912.09729, Eq. 5 (dual clip)")


@check("ppo_clip_loss/gradient-zero-when-clipped", kind="gradient", clause=PPO,
       equation="d loss_t / d logp_t = -A r / N, except 0 where (A > 0, r > 1 + eps_high), "
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
    mask = _mask([4, 4, 3], 4)
    for dtype in (F64, F32):
        for clip_high, dual in ((0.28, None), (0.28, 2.0), (None, None)):
            with ctx.variant():
                high = 0.2 if clip_high is None else clip_high
                ctx.on(f"ratio_above_and_below_clip/{str(dtype)[6:]} clip_high={clip_high} dual_clip={dual}")
                old = ctx.randn(3, 4, dtype=dtype, scale=0.3, shift=-1.5)
                logp = (old + ratios.log()).to(dtype).requires_grad_(True)
                A = adv.to(dtype)
                loss = ctx.call(logp, old, A, mask, 0.2, clip_high, dual, "token-mean")
                ctx.expect_tensor(loss, (), dtype, "loss")
                (grad,) = torch.autograd.grad(loss, logp)
                r = ratios.to(dtype)
                clipped = ((A > 0) & (r > 1 + high)) | ((A < 0) & (r < 1 - 0.2))
                if dual is not None:
                    clipped |= (A < 0) & (r > dual)
                expected = torch.where(mask & ~clipped, -A * r / mask.sum(), torch.zeros_like(r))
                ctx.compare(grad, expected, "d loss / d logp",
                            explain="zero exactly where the clipped branch is taken")


@check("ppo_clip_loss/gradient-equals-policy-gradient-at-old-policy", kind="gradient", clause=PPO,
       equation="at logp = old_logp (r = 1): d loss / d logp_t = -A_t w_t, the policy gradient "
                "with the aggregation weights w_t",
       hint="the ratio is exp(logp - old_logp); at r = 1 nothing is clipped",
       mutants=("ppo_ratio_inverted",))
def ppo_gradient_at_old_policy(ctx: Context):
    mask = _mask([3, 1, 4], 4)
    for dtype in (F64, F32):
        ctx.on(f"ratio_one/{str(dtype)[6:]}")
        old = ctx.randn(3, 4, dtype=dtype, shift=-1.0)
        A = ctx.randn(3, dtype=dtype)
        logp = old.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(ctx.call(logp, old, A, mask, 0.2, 0.28, None,
                                               "seq-mean-token-mean"), logp)
        w = mask.to(F64) / mask.sum(1, keepdim=True) / 3
        ctx.compare(grad, -A.unsqueeze(1) * w, "d loss / d logp at r = 1")


@check("value_loss/gradient-zero-when-clipped", kind="gradient",
       clause="API.md value_loss; Engstrom et al. 2020, arXiv:2005.12729 (value clipping)",
       equation="d loss_t / d V_t = (V_t - R_t) / N, except 0 where V left [V_old - e, V_old + e] "
                "and the clipped error is the larger",
       hint="take 0.5 max((V - R)^2, (V_old + clamp(V - V_old, -e, e) - R)^2), not min",
       mutants=("value_clip_min", "value_loss_no_half"))
def value_gradient_zero_when_clipped(ctx: Context):
    mask = _mask([4, 2, 3], 4)
    for dtype in (F64, F32):
        ctx.on(f"values_inside_and_outside_clip/{str(dtype)[6:]}")
        V_old, R = ctx.randn(3, 4, dtype=dtype), ctx.randn(3, 4, dtype=dtype)
        V = (V_old + ctx.uniform(-1, 1, 3, 4, dtype=dtype)).requires_grad_(True)
        (grad,) = torch.autograd.grad(ctx.call(V, V_old, R, mask, 0.2, "token-mean"), V)
        Vd = V.detach()
        err, err_clip = (Vd - R) ** 2, (V_old + (Vd - V_old).clamp(-0.2, 0.2) - R) ** 2
        expected = torch.where(mask & ~(err_clip > err), (Vd - R) / mask.sum(), torch.zeros_like(Vd))
        ctx.compare(grad, expected, "d loss / d V")


GRPO = ("API.md group_normalized_advantages; Shao et al. 2024, arXiv:2402.03300, Sec. 4.1.2; "
        "Liu et al. 2025, arXiv:2503.20783 (Dr. GRPO)")


def _per_group(scores, ids, scale, eps):
    s, g = scores.double().tolist(), ids.tolist()
    out = []
    for i in range(len(s)):
        members = [s[j] for j in range(len(s)) if g[j] == g[i]]
        mean = sum(members) / len(members)
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (len(members) - 1))
        every = sum(s) / len(s)
        std_b = math.sqrt(sum((x - every) ** 2 for x in s) / (len(s) - 1))
        out.append((s[i] - mean) / {"group": std + eps, "batch": std_b + eps, "none": 1.0}[scale])
    return torch.tensor(out, dtype=torch.float64)


@check("group_normalized_advantages/std-is-per-group", kind="reference", clause=GRPO,
       equation="A_i = (s_i - mean_g) / (std_g + eps), std_g the unbiased std of i's own group",
       hint="advantages use the batch std or the population std where scale='group' needs each "
            "group's own unbiased std (divisor n - 1)",
       mutants=("group_std_biased", "group_std_over_batch", "group_divides_by_variance"))
def std_is_per_group(ctx: Context):
    ids = torch.tensor([4, 9, 4, 9, 9, 4, 2, 2])
    for dtype in (F64, F32):
        ctx.on(f"groups_unsorted_ids/{str(dtype)[6:]}")
        scores = ctx.randn(8, dtype=dtype, scale=3.0)
        out = ctx.expect_tensor(ctx.call(scores, ids, "group", 1e-6), (8,), dtype)
        ctx.compare(out, _per_group(scores, ids, "group", 1e-6), "advantages")


@check("group_normalized_advantages/batch-scale-uses-std-of-all-scores", kind="reference",
       clause=GRPO + "; TRL scale_rewards='batch'",
       equation="A_i = (s_i - mean_g) / (std(all B scores) + eps)",
       hint="scale='batch' divides by the std of the raw scores of the whole batch, not of the "
            "centred values", mutants=("batch_scale_std_of_centred",))
def batch_scale(ctx: Context):
    ids = torch.tensor([1, 1, 1, 2, 2, 2])
    for dtype in (F64, F32):
        ctx.on(f"groups_with_different_means/{str(dtype)[6:]}")
        scores = ctx.randn(6, dtype=dtype) + torch.tensor([0, 0, 0, 5.0, 5, 5], dtype=dtype)
        out = ctx.expect_tensor(ctx.call(scores, ids, "batch", 1e-6), (6,), dtype)
        ctx.compare(out, _per_group(scores, ids, "batch", 1e-6), "advantages")


@check("group_normalized_advantages/group-id-permutation", kind="property", clause=GRPO,
       equation="A(s[pi], relabel(ids)[pi]) = A(s, ids)[pi]",
       hint="find groups by the value of group_ids (torch.unique), not by position; do not "
            "assume sorted, contiguous or equal-size groups",
       mutants=("group_assumes_contiguous",))
def group_permutation(ctx: Context):
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    perm = torch.tensor([4, 0, 8, 2, 6, 1, 7, 3, 5])
    new_ids = torch.tensor([70, 70, 70, 13, 13, 13, -5, -5, -5])[perm]
    for scale in ("group", "batch", "none"):
        ctx.on(f"interleaved_groups scale={scale}")
        scores = ctx.randn(9)
        with ctx.variant():
            base = ctx.expect_tensor(ctx.call(scores, ids, scale), (9,), F64)
            moved = ctx.expect_tensor(ctx.call(scores[perm], new_ids, scale), (9,), F64)
            ctx.compare(moved, base[perm], "advantages after permuting samples and relabelling ids")


@check("group_normalized_advantages/all-equal-group-gives-zero", kind="property", clause=GRPO,
       equation="s_i = c for all i in g  =>  A_i = 0",
       hint="an all-equal group has std 0: the eps guard must give 0, not NaN or inf",
       mutants=("group_mean_not_subtracted",))
def all_equal_zero(ctx: Context):
    for scale in ("group", "none"):                     # equal sizes: reshape-based trainers too
        # -1.3683 six times: its float32 mean is not -1.3683, so a trainer that computes in
        # float32 leaves a rounding residue, which a small eps then blows up
        for value, n in ((0.3, 3), (-1.3683, 6)):
            ctx.on(f"all_rewards_equal value={value} size={n} scale={scale}")
            scores = torch.tensor([value] * n + [0.7, 1.0, 0.0] * (n // 3), dtype=F64)
            group = torch.tensor([1] * n + [2] * (3 * (n // 3)))
            with ctx.variant():
                out = ctx.expect_tensor(ctx.call(scores, group, scale), (len(scores),), F64)
                ctx.compare(out[:n], torch.zeros(n), "advantages of the all-equal group",
                            tol=1e-9, nan_is_failure=True)


@check("leave_one_out_advantages/baseline-excludes-self", kind="reference",
       clause="API.md leave_one_out_advantages; Ahmadian et al. 2024, arXiv:2402.14740",
       equation="A_i = s_i - (1/(n_g - 1)) sum_{j in g, j != i} s_j",
       hint="the baseline is the mean of the *other* samples of the group (divide by n - 1)",
       mutants=("loo_includes_self", "loo_divides_by_group_size"))
def loo_excludes_self(ctx: Context):
    ids = torch.tensor([3, 8, 3, 8, 3])
    for dtype in (F64, F32):
        ctx.on(f"two_groups/{str(dtype)[6:]}")
        s = ctx.randn(5, dtype=dtype)
        expected = [float(s[i]) - sum(float(s[j]) for j in range(5) if ids[j] == ids[i] and j != i)
                    / (int((ids == ids[i]).sum()) - 1) for i in range(5)]
        out = ctx.expect_tensor(ctx.call(s, ids), (5,), dtype)
        ctx.compare(out, torch.tensor(expected, dtype=F64), "advantages")


@check("kl_estimate/k3-nonnegative", kind="property",
       clause="API.md kl_estimate; Schulman 2020, 'Approximating KL Divergence'",
       equation="k3 = exp(-l) - 1 + l >= 0 for every l",
       hint="k3 is exp(-l) - 1 + l with l = logp - ref_logp (note the signs)",
       mutants=("k3_log_sign_flipped",))
def k3_nonnegative(ctx: Context):
    for dtype in (F64, F32):
        ctx.on(f"large_and_tiny_log_ratios/{str(dtype)[6:]}")
        l = torch.tensor([[-8.0, -1.0, -1e-4, 0.0], [1e-4, 0.5, 3.0, 8.0]], dtype=dtype)
        out = ctx.expect_tensor(ctx.call(l - 2.0, torch.full_like(l, -2.0), None, "k3"), (2, 4), dtype)
        ctx.require(bool((out >= 0).all()), f"k3 = {float(out.min()):.6g} < 0 at some log-ratio",
                    actual=float(out.min()), expected=">= 0")


@check("kl_estimate/large-log-ratios", kind="reference",
       clause="API.md kl_estimate: 'no clamping'; Schulman 2020",
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
            out = ctx.expect_tensor(ctx.call(ref + l, ref, None, kind), (2, 4), F64)
            ctx.compare(out, refimpl.kl_estimate(ref + l, ref, None, kind), f"{kind}")


@check("aggregate/modes-agree-on-equal-lengths", kind="property",
       clause="API.md aggregate",
       equation="equal lengths n: token-mean = seq-mean-token-mean = seq-mean-token-sum / n",
       hint="token-mean divides by the number of real tokens, not by B * T",
       mutants=("token_mean_divides_by_padded_size",))
def modes_agree(ctx: Context):
    mask = _mask([3, 3, 3], 5)
    x = ctx.randn(3, 5)
    ctx.on("equal_lengths_with_padding")
    tm = ctx.call(x, mask, "token-mean")
    ctx.compare(ctx.call(x, mask, "seq-mean-token-mean"), tm, "seq-mean-token-mean vs token-mean")
    ctx.compare(ctx.call(x, mask, "seq-mean-token-sum") / 3, tm, "seq-mean-token-sum / n vs token-mean")


@check("dpo_loss/log2-at-zero-margin", kind="reference",
       clause="API.md dpo_loss; Rafailov et al. 2023, arXiv:2305.18290, Eq. 7",
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
       clause="API.md dpo_loss; Rafailov et al. 2023, arXiv:2305.18290, Sec. 4 (the DPO update)",
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
       clause="API.md bradley_terry_loss; Ouyang et al. 2022, arXiv:2203.02155, Eq. 1; Touvron et "
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
                out = ctx.expect_tensor(ctx.call(c, r, m), (5,), dtype)
                (g,) = torch.autograd.grad(out.sum(), c)
                mm = 0.0 if m is None else m
                ctx.compare(g, torch.sigmoid(c.detach() - r - mm) - 1, "d loss / d chosen_rewards")


@check("token_logprobs/normalised-over-vocabulary", kind="property",
       clause="API.md token_logprobs",
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


__all__ = ["AdapterMisbehaved"]
