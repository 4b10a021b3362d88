"""Group baselines: ``group_normalized_advantages`` (GRPO, Dr. GRPO) and
``leave_one_out_advantages`` (RLOO).

Equations and sources: ``refimpl/group.py``. Here: the table entries, the hand-written and
exact checks, and the mutants those checks reject (``conformance/checks/__init__.py``).
"""

from __future__ import annotations

import math

import torch

import refimpl
from conformance.checks.templates import (
    EXACT,
    F32,
    F64,
    GROUPS,
    Op,
    bias_factor,
    group_scores,
    input_check,
    mutant,
    register_op,
    tabular_policy,
    tuple_group_advantages,
)
from conformance.context import Context
from conformance.registry import check
from refimpl import tabular as tab


# --- mutants --------------------------------------------------------------------------------------
def _group_stats(scores, group_ids):
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = counts.to(scores.dtype)
    mean = torch.zeros(len(counts), dtype=scores.dtype).index_add(0, inv, scores) / n
    c = scores - mean[inv]
    ss = torch.zeros(len(counts), dtype=scores.dtype).index_add(0, inv, c ** 2)
    return inv, n, mean, c, ss


@mutant("group_normalized_advantages", "std with divisor n (population std) instead of n - 1")
def group_std_biased(scores, group_ids, scale="group", eps=1e-6):
    if scale != "group":
        return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    inv, n, mean, c, ss = _group_stats(scores, group_ids)
    return c / ((ss / n).sqrt()[inv] + eps)


@mutant("group_normalized_advantages", "scale='group' divides by the batch std")
def group_std_over_batch(scores, group_ids, scale="group", eps=1e-6):
    if scale == "group":
        scale = "batch"
    return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)


@mutant("group_normalized_advantages", "scale='batch' uses the std of the centred values")
def batch_scale_std_of_centred(scores, group_ids, scale="group", eps=1e-6):
    if scale != "batch":
        return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    c = refimpl.group_normalized_advantages(scores, group_ids, "none")
    return c / (c.std() + eps)


@mutant("group_normalized_advantages", "groups taken as consecutive blocks (reshape to (-1, G)), "
        "ignoring the ids")
def group_assumes_contiguous(scores, group_ids, scale="group", eps=1e-6):
    n_groups = len(torch.unique(group_ids))
    G = scores.shape[0] // n_groups
    blocks = torch.arange(scores.shape[0]) // G
    return refimpl.group_normalized_advantages(scores, blocks, scale, eps)


@mutant("group_normalized_advantages", "forgets to subtract the group mean")
def group_mean_not_subtracted(scores, group_ids, scale="group", eps=1e-6):
    out = refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    if scale == "none":
        return scores
    inv, n, mean, c, ss = _group_stats(scores, group_ids)
    return out + mean[inv] / ((ss / (n - 1)).sqrt()[inv] + eps)


@mutant("group_normalized_advantages", "divides by the variance instead of the std")
def group_divides_by_variance(scores, group_ids, scale="group", eps=1e-6):
    if scale != "group":
        return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    inv, n, mean, c, ss = _group_stats(scores, group_ids)
    return c / ((ss / (n - 1))[inv] + eps)


@mutant("group_normalized_advantages", "scale='none' excludes the sample from the mean (RLOO's "
        "baseline under Dr. GRPO's name)")
def group_none_excludes_self(scores, group_ids, scale="group", eps=1e-6):
    if scale == "none":
        return refimpl.leave_one_out_advantages(scores, group_ids)
    return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)


@mutant("group_normalized_advantages", "a group of one silently gets advantage 0")
def group_accepts_singleton(scores, group_ids, scale="group", eps=1e-6):
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        return torch.zeros_like(scores)
    return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)


@mutant("group_normalized_advantages", "eps 1e-8 (far below float32 resolution) and a plain "
        "mean sum / n, computed in the input dtype: the mean's rounding residue on an "
        "all-equal group becomes d / 1e-8")
def group_eps_1e8_plain_mean(scores, group_ids, scale="group", eps=1e-6):
    refimpl.group_normalized_advantages(scores, group_ids, scale, eps)      # its validation
    inv, n, _, c, ss = _group_stats(scores, group_ids)
    if scale == "none":
        return c
    if scale == "batch":
        return c / (scores.std() + 1e-8)
    return c / ((ss / (n - 1)).sqrt()[inv] + 1e-8)


@mutant("leave_one_out_advantages", "the baseline includes the sample itself (a group mean)")
def loo_includes_self(scores, group_ids):
    return refimpl.group_normalized_advantages(scores, group_ids, scale="none")


@mutant("leave_one_out_advantages", "the sum of the others is divided by G instead of G - 1")
def loo_divides_by_group_size(scores, group_ids):
    inv, n, mean, c, ss = _group_stats(scores, group_ids)
    total = (mean * n)[inv]
    return scores - (total - scores) / n[inv]


# --- table entries (the generic checks: values, gradients, padding, mutation, dtype) --------------
register_op(Op("group_normalized_advantages", lambda c, s: (group_scores(c, s), {}), GROUPS, "B",
       variants=({"scale": "group"}, {"scale": "batch"}, {"scale": "none"}),
       mutants={"matches-reference": ("group_std_biased", "group_std_over_batch",
                                      "batch_scale_std_of_centred", "group_mean_not_subtracted",
                                      "group_none_excludes_self", "group_divides_by_variance")}))

register_op(Op("leave_one_out_advantages", lambda c, s: (group_scores(c, s), {}), GROUPS, "B",
       mutants={"matches-reference": ("loo_includes_self", "loo_divides_by_group_size")}))


# --- invalid input --------------------------------------------------------------------------------
input_check("group_normalized_advantages/rejects-group-of-one", "group_ids",
             lambda c: ((c.randn(4), torch.tensor([0, 0, 1, 1])), {"scale": "none"}),
             lambda c: ((c.randn(3), torch.tensor([0, 0, 1])), {"scale": "none"}),
             "a group of one has no statistic: raise ValueError for every scale",
             ("group_accepts_singleton",))
input_check("group_normalized_advantages/rejects-unknown-scale", "scale",
             lambda c: ((c.randn(4), torch.tensor([0, 0, 1, 1])), {"scale": "batch"}),
             lambda c: ((c.randn(4), torch.tensor([0, 0, 1, 1])), {"scale": "global"}),
             "scale is one of 'group', 'batch', 'none'")
input_check("leave_one_out_advantages/rejects-group-of-one", "group_ids",
             lambda c: ((c.randn(4), torch.tensor([3, 3, 1, 1])), {}),
             lambda c: ((c.randn(3), torch.tensor([3, 3, 1])), {}),
             "the leave-one-out baseline of a group of one is a mean over nothing")



@mutant("leave_one_out_advantages", "advantages clipped to [-10, 10] (a reward clip applied "
        "after the baseline is subtracted)")
def loo_clipped_at_10(scores, group_ids):
    return refimpl.leave_one_out_advantages(scores, group_ids).clamp(-10.0, 10.0)


@mutant("group_normalized_advantages", "advantages clipped to [-10, 10] (a reward clip applied "
        "after the baseline is subtracted)")
def group_clipped_at_10(scores, group_ids, scale="group", eps=1e-6):
    return refimpl.group_normalized_advantages(scores, group_ids, scale, eps).clamp(-10.0, 10.0)

# --- analytic checks ------------------------------------------------------------------------------
GRPO = ("Shao et al. 2024, arXiv:2402.03300, Sec. 4.1.2; "
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


@check("group_normalized_advantages/std-is-per-group", kind="reference",
       section="returns-and-advantages", source=GRPO,
       equation="A_i = (s_i - mean_g) / (std_g + eps), std_g the unbiased std of i's own group",
       hint="advantages use the batch std or the population std where scale='group' needs each "
            "group's own unbiased std (divisor n - 1)",
       mutants=("group_std_biased", "group_std_over_batch", "group_divides_by_variance"))
def std_is_per_group(ctx: Context):
    ids = torch.tensor([4, 9, 4, 9, 9, 4, 2, 2])
    for dtype in (F64, F32):
        ctx.on(f"groups_unsorted_ids/{str(dtype)[6:]}")
        scores = ctx.randn(8, dtype=dtype, scale=3.0)
        out = ctx.expect_tensor(ctx.call(scores, ids, "group", 1e-6, about=("scale",)), (8,), dtype)
        ctx.compare(out, _per_group(scores, ids, "group", 1e-6), "advantages")


@check("group_normalized_advantages/batch-scale-uses-std-of-all-scores", kind="reference",
       section="returns-and-advantages", source=GRPO + "; TRL scale_rewards='batch'",
       equation="A_i = (s_i - mean_g) / (std(all B scores) + eps)",
       hint="scale='batch' divides by the std of the raw scores of the whole batch, not of the "
            "centred values", mutants=("batch_scale_std_of_centred",))
def batch_scale(ctx: Context):
    ids = torch.tensor([1, 1, 1, 2, 2, 2])
    for dtype in (F64, F32):
        ctx.on(f"groups_with_different_means/{str(dtype)[6:]}")
        scores = ctx.randn(6, dtype=dtype) + torch.tensor([0, 0, 0, 5.0, 5, 5], dtype=dtype)
        out = ctx.expect_tensor(ctx.call(scores, ids, "batch", 1e-6, about=("scale",)), (6,), dtype)
        ctx.compare(out, _per_group(scores, ids, "batch", 1e-6), "advantages")


@check("group_normalized_advantages/group-id-permutation", kind="property",
       section="returns-and-advantages", source=GRPO,
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
            base = ctx.expect_tensor(ctx.call(scores, ids, scale, about=("scale",)), (9,), F64)
            moved = ctx.expect_tensor(ctx.call(scores[perm], new_ids, scale, about=("scale",)), (9,), F64)
            ctx.compare(moved, base[perm], "advantages after permuting samples and relabelling ids")


# Reward values that no binary float holds exactly, at group sizes where the plain mean (sum / n)
# of n copies is not the value itself: n = 7 for 0.1 and 0.7 and n = 6 for 0.3 in float32, n = 3
# for 0.1 and 0.7 and n = 6 for -1.3683 in float64. A trainer that centres on such a mean leaves
# the same residue d != 0 on every member, so the group std is 0 and A = d / eps.
ALL_EQUAL = ((0.1, 7), (0.3, 6), (0.7, 7), (0.1, 3), (0.7, 3), (-1.3683, 6))
OTHER_GROUP = (0.0, 1.0, 0.5, 0.2, 0.9, 0.4, 0.6)
UNIT_ROUNDOFF = {F64: 2.0 ** -53, F32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8,
                 torch.float16: 2.0 ** -11}


def _all_equal_batch(value, n, dtype):
    """A group of n equal rewards, then a group of n varied ones (equal sizes, so that
    trainers that reshape to (-1, G) take it too)."""
    scores = torch.tensor([value] * n + list(OTHER_GROUP[:n]), dtype=dtype)
    return scores, torch.tensor([1] * n + [2] * n)


def _all_equal_tol(value, n, dtype, eps):
    """What rounding can leave: the mean of n copies of v computed by summation is off by at
    most n u |v| (recursive summation, gamma_{n-1} bound, plus the division; Higham, 'Accuracy
    and Stability of Numerical Algorithms', 2nd ed. 2002, Sec. 4.2), u the unit roundoff of
    ``dtype``; divided by std + eps >= eps that is at most n u |v| / eps."""
    return n * UNIT_ROUNDOFF[dtype] * abs(value) / eps


@check("group_normalized_advantages/all-equal-group-gives-zero", kind="property",
       section="returns-and-advantages", source=GRPO,
       equation="s_i = c for all i in g  =>  A_i = 0, within n u |c| / eps (u the unit roundoff "
                "of the input dtype, eps = 1e-6)",
       hint="an all-equal group has std 0: the eps guard must give 0, not NaN or inf; and the "
            "rounding residue of the group mean is divided by that eps, so an eps far below the "
            "dtype's resolution (1e-8, 1e-9 in float32) makes it a large advantage: centre on "
            "scores shifted by the group minimum, or use an eps the residue cannot reach",
       mutants=("group_mean_not_subtracted", "group_eps_1e8_plain_mean"))
def all_equal_zero(ctx: Context):
    for dtype in (F64, F32):
        for scale in ("group", "batch", "none"):
            for value, n in ALL_EQUAL:
                ctx.on(f"all_rewards_equal/{str(dtype)[6:]} value={value} size={n} scale={scale}")
                scores, group = _all_equal_batch(value, n, dtype)
                with ctx.variant():
                    out = ctx.expect_tensor(ctx.call(scores, group, scale, 1e-6, about=("scale",)),
                                            (2 * n,), dtype)
                    # a float32 output (of float64 input) at float32's rounding (docs/contract.md, "What an adapter may and may not do")
                    tol = _all_equal_tol(value, n, out.dtype, 1e-6)
                    ctx.compare(out[:n], torch.zeros(n), "advantages of the all-equal group",
                                tol=tol, nan_is_failure=True,
                                explain=f"tolerance n u |v| / eps = {tol:.2g}")


@check("leave_one_out_advantages/all-equal-group-gives-zero", kind="property",
       section="returns-and-advantages", source="Ahmadian et al. 2024, arXiv:2402.14740",
       equation="s_i = c for all i in g  =>  A_i = c - c = 0, within 2 n u |c| (u the unit "
                "roundoff of the input dtype)",
       hint="the baseline is the mean of the other n - 1 scores: (sum - s_i) / (n - 1), not the "
            "sum divided by n",
       mutants=("loo_divides_by_group_size",))
def loo_all_equal_zero(ctx: Context):
    for dtype in (F64, F32):
        for value, n in ALL_EQUAL:
            ctx.on(f"all_rewards_equal/{str(dtype)[6:]} value={value} size={n}")
            scores, group = _all_equal_batch(value, n, dtype)
            with ctx.variant():
                out = ctx.expect_tensor(ctx.call(scores, group), (2 * n,), dtype)
                # no eps here: the residue of a plain sum stays a few ulps of |c|
                tol = 2 * n * UNIT_ROUNDOFF[out.dtype] * abs(value)
                ctx.compare(out[:n], torch.zeros(n), "advantages of the all-equal group",
                            tol=tol, nan_is_failure=True, explain=f"tolerance 2 n u |v| = {tol:.2g}")


@check("leave_one_out_advantages/baseline-excludes-self", kind="reference",
       section="returns-and-advantages", source="Ahmadian et al. 2024, arXiv:2402.14740",
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


# --- exact checks (every outcome of refimpl.tabular enumerated) ------------------------------------
@check("leave_one_out_advantages/exact-unbiased", kind="exact", tol=EXACT,
       section="returns-and-advantages", source="Ahmadian et al. 2024, arXiv:2402.14740 (RLOO); Kool et al. 2019",
       equation="E[(1/G) sum_i A_i grad log pi(y_i)] = grad J exactly, for G = 2, 3, 4",
       hint="the baseline must exclude the sample itself: mean over the other G - 1 samples",
       mutants=("loo_includes_self",),          # dividing by G: a wrong value, still unbiased
       derivation="""\
E[A_i grad log pi(y_i)] = E[R_i grad log pi(y_i)] - E[b_i grad log pi(y_i)], and
b_i = mean_{j != i} R_j is independent of y_i, so the second term is E[b_i] E[grad log pi] = 0.
Enumerated: every G-tuple of one prompt's 7 responses (multisets with multinomial weights),
the adapter's advantages for all tuples in one call, the REINFORCE surrogate differentiated.""")
def exact_loo(ctx: Context):
    pol, scores = tabular_policy()
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    factors = []
    for G in (2, 3, 4):
        ctx.on(f"every {G}-tuple")
        tup = pol.tuples(G)
        A, dtype = tuple_group_advantages(ctx, tup, scores)
        g = -pol.expected_gradient(tab.pg_surrogate(A), tup)
        factors.append(f"{bias_factor(g, grad_J):.6f} (G = {G})")
        ctx.compare(g, grad_J, f"E[grad] for G = {G}", dtype=dtype,
                    explain=f"bias factor {bias_factor(g, grad_J):.6f} (G = {G}), expected 1")
    ctx.note("bias factor " + ", ".join(factors) + ", expected 1")


@check("group_normalized_advantages/exact-mean-baseline-scales-gradient", kind="exact", tol=EXACT,
       section="returns-and-advantages", source="Liu et al. 2025, arXiv:2503.20783 (Dr. GRPO), scale='none'",
       equation="scale='none': E[grad] = (1 - 1/G) grad J exactly",
       hint="scale='none' subtracts the group mean *including* the sample itself",
       mutants=("group_none_excludes_self", "group_mean_not_subtracted"),
       derivation="""\
A_i = R_i - (1/G) sum_j R_j = (1 - 1/G) R_i - (1/G) sum_{j != i} R_j; the second part is
independent of y_i and vanishes in expectation, leaving (1 - 1/G) E[R_i grad log pi(y_i)].""")
def exact_group_mean(ctx: Context):
    pol, scores = tabular_policy()
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    factors = []
    for G in (2, 4, 6):
        ctx.on(f"every {G}-tuple")
        tup = pol.tuples(G)
        A, dtype = tuple_group_advantages(ctx, tup, scores, scale="none")
        g = -pol.expected_gradient(tab.pg_surrogate(A), tup)
        f = bias_factor(g, grad_J)
        factors.append(f"{f:.6f} (G = {G})")
        ctx.compare(g, (1 - 1 / G) * grad_J, f"E[grad] for G = {G}", dtype=dtype,
                    explain=f"bias factor {f:.6f} (G = {G}), expected {1 - 1 / G:.6f}")
    ctx.note("bias factor " + ", ".join(factors) + "; expected 1 - 1/G")


@check("group_normalized_advantages/exact-std-normalisation-bias", kind="exact", tol=EXACT,
       section="returns-and-advantages", source="Shao et al. 2024, arXiv:2402.03300, Sec. 4.1.2; Liu et al. 2025, arXiv:2503.20783, Sec. 3.1",
       equation="scale='group': E[grad] equals refimpl's exact value (with the same eps); "
                "reported against the ideal grad J / sigma",
       hint="the exact bias differs from refimpl's: check the std (unbiased, per group) and "
            "where eps is added",
       mutants=("group_std_biased", "group_std_over_batch"),
       derivation="""\
Dividing by the sample std makes A_i a nonlinear function of the group, so E[A_i | y_i = c]
is no longer proportional to R(c) - E[R]: the expected gradient is the policy gradient of an
'effective reward' and is not parallel to grad J / sigma. Its exact value is the sum over all
G-tuples; the note gives |E g| / |grad J/sigma| and the cosine.""")
def exact_group_std(ctx: Context):
    pol, scores = tabular_policy()
    ideal = pol.ideal_normalized_gradient(scores, per_prompt=True)
    notes = []
    for scale in ("group",):        # 'batch' over one group per call would equal 'group'
        for G in (2, 4, 6):
            ctx.on(f"every {G}-tuple scale={scale}")
            tup = pol.tuples(G)
            R = scores[tup.prompt, tup.completion]
            if scale == "batch":
                # the batch std spans one call: one call per tuple (the batch is one group)
                one_group = torch.zeros(G, dtype=torch.int64)
                outs = [ctx.call(R[k], one_group, scale="batch", eps=1e-6, about=("scale",)) for k in range(len(tup))]
                A = torch.stack([ctx.expect_tensor(o, (G,), None).detach().to(F64) for o in outs])
                dtype = outs[0].dtype
                ref = torch.stack([refimpl.group_normalized_advantages(R[k], one_group, "batch", 1e-6)
                                   for k in range(len(tup))])
            else:
                A, dtype = tuple_group_advantages(ctx, tup, scores, scale="group", eps=1e-6)
                ref = refimpl.group_normalized_advantages(
                    R.flatten(), torch.arange(len(tup)).repeat_interleave(G), "group", 1e-6)
            g = -pol.expected_gradient(tab.pg_surrogate(A), tup)
            g_ref = -pol.expected_gradient(tab.pg_surrogate(ref.reshape(len(tup), G)), tup)
            ratio, cos = float(g.norm() / ideal.norm()), tab.cosine(g, ideal)
            notes.append(f"{scale}, G = {G}: |E g|/|grad J/sigma| = {ratio:.6f}, cosine {cos:.6f}")
            ctx.compare(g, g_ref, f"E[grad] for scale={scale}, G = {G}", dtype=dtype,
                        explain=f"ratio {ratio:.6f}, cosine {cos:.6f}; refimpl's ratio "
                                f"{float(g_ref.norm() / ideal.norm()):.6f}")
    ctx.note("; ".join(notes))


# --- scores of any size ---------------------------------------------------------------------------
#: rewards of a verifier with a large range (a score of 30 for a solved task, -20 for a crash)
WIDE_SCORES = (0.0, 30.0, -20.0, 5.0, 6.0, 5.5)
WIDE_IDS = (0, 0, 0, 1, 1, 1)


@check("group_normalized_advantages/scores-of-any-size", kind="reference",
       section="returns-and-advantages", source=GRPO,
       equation="A_i = s_i - mean_g (scale='none', Dr. GRPO) for scores of any size: no clip "
                "on the advantages (with 'group' a small group's |A_i| stays below sqrt(n), so a "
                "clip could not show there)",
       hint="the advantage is the centred (and scaled) score, whatever its size: a clip of the "
            "rewards belongs before the baseline, not on the advantages",
       mutants=("group_clipped_at_10",))
def group_scores_of_any_size(ctx: Context):
    ids = torch.tensor(WIDE_IDS)
    for dtype in (F64, F32):
        ctx.on(f"wide_scores/{str(dtype)[6:]} scale=none")
        scores = torch.tensor(WIDE_SCORES, dtype=dtype)
        out = ctx.expect_tensor(ctx.call(scores, ids, "none", about=("scale",)), (6,), dtype)
        ctx.compare(out, _per_group(scores, ids, "none", 1e-6), "advantages")


@check("leave_one_out_advantages/scores-of-any-size", kind="reference",
       section="returns-and-advantages", source="Ahmadian et al. 2024, arXiv:2402.14740",
       equation="A_i = s_i - (1/(n_g - 1)) sum_{j in g, j != i} s_j, for scores of any size",
       hint="the advantage is the score minus the others' mean, whatever its size: a clip of the "
            "rewards belongs before the baseline, not on the advantages",
       mutants=("loo_clipped_at_10",))
def loo_scores_of_any_size(ctx: Context):
    ids = torch.tensor(WIDE_IDS)
    for dtype in (F64, F32):
        ctx.on(f"wide_scores/{str(dtype)[6:]}")
        s = torch.tensor(WIDE_SCORES, dtype=dtype)
        expected = [float(s[i]) - sum(float(s[j]) for j in range(6) if ids[j] == ids[i] and j != i)
                    / (int((ids == ids[i]).sum()) - 1) for i in range(6)]
        out = ctx.expect_tensor(ctx.call(s, ids), (6,), dtype)
        ctx.compare(out, torch.tensor(expected, dtype=F64), "advantages")
