"""Group advantages (GRPO, Dr. GRPO, batch scaling, RLOO) against per-group loops, and their
invariances: permutation of samples and of group ids, shift and scale of the scores."""

import statistics

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tests.harness import against, assert_close

TOL = 1e-12       # float64, a handful of sums per group


@st.composite
def groups(draw, min_size=2, max_size=5, max_groups=4, equal=False):
    """Scores with unsorted, non-contiguous group ids and (unless ``equal``) unequal sizes."""
    n_groups = draw(st.integers(1, max_groups))
    if equal:
        size = draw(st.integers(min_size, max_size))
        sizes = [size] * n_groups
    else:
        sizes = draw(st.lists(st.integers(min_size, max_size), min_size=n_groups,
                              max_size=n_groups))
    ids = draw(st.lists(st.integers(-50, 10 ** 6), min_size=n_groups, max_size=n_groups,
                        unique=True))
    labels = [i for i, n in zip(ids, sizes) for _ in range(n)]
    order = draw(st.permutations(range(len(labels))))
    values = draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, -2.0, 3.25]) | st.floats(-10, 10),
                           min_size=len(labels), max_size=len(labels)))
    scores = torch.tensor(values, dtype=torch.float64)
    group_ids = torch.tensor([labels[i] for i in order], dtype=torch.int64)
    return scores, group_ids


# a must-run case: ids 7 and 3 interleaved, sizes 3 and 2
INTERLEAVED = (torch.tensor([1.0, 0.0, 2.0, 5.0, 0.5], dtype=torch.float64),
               torch.tensor([7, 3, 7, 7, 3]))


def _per_group_loop(scores, group_ids, scale, eps):
    """The definition, one sample at a time with Python's statistics module (an oracle)."""
    s, g = scores.tolist(), group_ids.tolist()
    out = []
    for i in range(len(s)):
        members = [s[j] for j in range(len(s)) if g[j] == g[i]]
        centred = s[i] - statistics.fmean(members)
        if scale == "group":
            centred /= statistics.stdev(members) + eps
        elif scale == "batch":
            centred /= statistics.stdev(s) + eps
        out.append(centred)
    return torch.tensor(out, dtype=torch.float64)


@against("group_std_biased", "group_std_over_batch")
@given(case=groups())
@example(case=INTERLEAVED)
def test_group_scale_divides_by_each_groups_unbiased_std(rf, case):
    scores, ids = case
    assert_close(rf.group_normalized_advantages(scores, ids, "group", 1e-6),
          _per_group_loop(scores, ids, "group", 1e-6), 1e-9, "scale='group' vs per-group loop")


@against("batch_scale_std_of_centred")
@given(case=groups())
@example(case=INTERLEAVED)
def test_batch_scale_divides_by_std_of_all_scores(rf, case):
    scores, ids = case
    assert_close(rf.group_normalized_advantages(scores, ids, "batch", 1e-6),
          _per_group_loop(scores, ids, "batch", 1e-6), 1e-9, "scale='batch' vs per-group loop")


@against("group_none_excludes_self", "group_mean_not_subtracted")
@given(case=groups())
@example(case=INTERLEAVED)
def test_none_scale_subtracts_the_group_mean_self_included(rf, case):
    scores, ids = case
    assert_close(rf.group_normalized_advantages(scores, ids, "none"),
          _per_group_loop(scores, ids, "none", 0.0), 1e-9, "scale='none' vs per-group loop")


@against("loo_includes_self", "loo_divides_by_group_size")
@given(case=groups())
@example(case=INTERLEAVED)
def test_leave_one_out_baseline_excludes_self(rf, case):
    scores, ids = case
    s, g = scores.tolist(), ids.tolist()
    expected = [s[i] - statistics.fmean([s[j] for j in range(len(s)) if g[j] == g[i] and j != i])
                for i in range(len(s))]
    assert_close(rf.leave_one_out_advantages(scores, ids), expected, 1e-9, "leave-one-out vs loop")


@against("group_assumes_contiguous")
@given(case=groups(equal=True), data=st.data())
def test_permuting_samples_and_relabelling_groups_permutes_advantages(rf, case, data):
    scores, ids = case
    perm = torch.tensor(data.draw(st.permutations(range(len(scores)))))
    relabel = {int(i): 1000 - 3 * k for k, i in enumerate(torch.unique(ids))}   # new, decreasing
    new_ids = torch.tensor([relabel[int(i)] for i in ids[perm]])
    for scale in ("group", "batch", "none"):
        base = rf.group_normalized_advantages(scores, ids, scale)
        moved = rf.group_normalized_advantages(scores[perm], new_ids, scale)
        assert_close(moved, base[perm], TOL, f"scale={scale!r} after permuting samples and ids")


@against("group_mean_not_subtracted", "group_divides_by_variance")
@given(case=groups(), shift=st.floats(-100, 100), log_scale=st.floats(-3, 3))
@example(case=INTERLEAVED, shift=10.0, log_scale=1.0)
def test_group_normalisation_is_shift_and_scale_invariant(rf, case, shift, log_scale):
    """(a s + b - mean) / std is independent of a > 0 and b (with eps = 0, non-constant groups)."""
    scores, ids = case
    _, inv = torch.unique(ids, return_inverse=True)
    k = int(inv.max()) + 1
    high = torch.zeros(k, dtype=torch.float64).scatter_reduce(0, inv, scores, "amax", include_self=False)
    low = torch.zeros(k, dtype=torch.float64).scatter_reduce(0, inv, scores, "amin", include_self=False)
    spread = high - low
    if bool((spread < 1e-3).any()):
        scores = scores + 100.0 * torch.arange(len(scores), dtype=torch.float64)   # all distinct
    a = 10.0 ** log_scale
    base = rf.group_normalized_advantages(scores, ids, "group", eps=0.0)
    moved = rf.group_normalized_advantages(a * scores + shift, ids, "group", eps=0.0)
    # relative tolerance: shifting by up to 100 on scores of size ~10 loses about 1e-13 relative
    assert_close(moved, base, 1e-8, "group normalisation after an affine change of the scores")


@against("group_mean_not_subtracted")
@given(value=st.floats(-5, 5), sizes=st.lists(st.integers(2, 5), min_size=1, max_size=3))
def test_all_equal_group_gets_zero_advantage(rf, value, sizes):
    ids = torch.tensor([k for k, n in enumerate(sizes) for _ in range(n)])
    scores = torch.full((len(ids),), value, dtype=torch.float64) + ids.to(torch.float64) * 0.0
    for scale in ("group", "none"):
        assert_close(rf.group_normalized_advantages(scores, ids, scale), torch.zeros(len(ids)), 0.0,
              f"all-equal group, scale={scale!r}")
    assert_close(rf.leave_one_out_advantages(scores, ids), torch.zeros(len(ids)), 0.0,
          "all-equal group, leave-one-out")



@against("group_eps_1e8_plain_mean")
def test_all_equal_group_gets_exactly_zero_in_float32_where_the_plain_mean_misses(rf):
    """0.1, 0.3 and 0.7 are not binary floats, and at these sizes the float32 sum / n of the
    group is not the value itself; refimpl centres on scores shifted by the group minimum, so
    the advantages are exactly 0 (not the rounding residue divided by eps)."""
    for value, n in ((0.1, 7), (0.3, 6), (0.7, 7)):
        x = torch.full((n,), value, dtype=torch.float32)
        assert float(x[0] - x.sum() / n) != 0.0, "the sample no longer shows a rounding residue"
        scores = torch.cat([x, torch.tensor([0.0, 1.0, 0.5, 0.2, 0.9, 0.4, 0.6][:n])])
        ids = torch.tensor([1] * n + [2] * n)
        for scale in ("group", "batch", "none"):
            out = rf.group_normalized_advantages(scores, ids, scale)
            assert_close(out[:n], torch.zeros(n), 0.0,
                         f"float32 all-equal group {value} x {n}, scale={scale!r}")
