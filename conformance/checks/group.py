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


@check("group_normalized_advantages/all-equal-group-gives-zero", kind="property",
       section="returns-and-advantages", source=GRPO,
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
                out = ctx.expect_tensor(ctx.call(scores, group, scale, about=("scale",)), (len(scores),), F64)
                ctx.compare(out[:n], torch.zeros(n), "advantages of the all-equal group",
                            tol=1e-9, nan_is_failure=True)


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
