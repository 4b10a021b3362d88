"""Aggregation modes, the policy-gradient loss, PPO's clipped surrogate (clip-higher, dual clip)
and the clipped value loss: values and per-token gradients against their closed forms."""

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from refimpl.aggregation import AGG_MODES
from tests.harness import Padded, against, assert_close, padded_batches

TOL = 1e-12                       # float64 sums of at most 30 terms
UNEQUAL = Padded([3, 1, 2], 4, seed=9, dtype=torch.float64)
aggs = st.sampled_from(AGG_MODES)


def _aggregate_loop(x, lengths, mode, norm_len=None):
    """The four modes, written out row by row (an oracle)."""
    rows = [x[b, :n].tolist() for b, n in enumerate(lengths)]
    B, T = x.shape
    if mode == "token-mean":
        return sum(map(sum, rows)) / sum(lengths)
    if mode == "seq-mean-token-mean":
        return sum(sum(r) / len(r) for r in rows) / B
    if mode == "seq-mean-token-sum":
        return sum(map(sum, rows)) / B
    return sum(map(sum, rows)) / (B * (T if norm_len is None else norm_len))


@against("token_mean_divides_by_padded_size", "sum_norm_uses_longest_row")
@given(b=padded_batches(dtypes=(torch.float64,)), mode=aggs)
@example(b=UNEQUAL, mode="token-mean")
@example(b=UNEQUAL, mode="seq-mean-token-sum-norm")
def test_aggregation_modes_follow_their_definitions(rf, b, mode):
    x = b.randn()
    assert_close(rf.aggregate(x, b.mask, mode), _aggregate_loop(x, b.lengths, mode), TOL,
          f"aggregate(mode={mode!r})")
    assert_close(rf.aggregate(x, b.mask, mode, norm_len=7.0),
          _aggregate_loop(x, b.lengths, mode, 7.0 if mode.endswith("norm") else None), TOL,
          f"aggregate(mode={mode!r}, norm_len=7)")


@against("token_mean_divides_by_padded_size")
@given(b=padded_batches(dtypes=(torch.float64,), equal_lengths=True))
@example(b=Padded([2, 2, 2], 5, seed=1, dtype=torch.float64))
def test_aggregation_modes_agree_when_all_rows_have_equal_length(rf, b):
    x, n = b.randn(), b.lengths[0]
    token_mean = rf.aggregate(x, b.mask, "token-mean")
    assert_close(rf.aggregate(x, b.mask, "seq-mean-token-mean"), token_mean, TOL, "seq-mean-token-mean")
    assert_close(rf.aggregate(x, b.mask, "seq-mean-token-sum"), n * token_mean, TOL,
          "seq-mean-token-sum = length * token-mean")
    assert_close(rf.aggregate(x, b.mask, "seq-mean-token-sum-norm", norm_len=n), token_mean, TOL,
          "seq-mean-token-sum-norm with norm_len = length")


@against("pg_sign_flipped", "pg_ignores_agg")
@given(b=padded_batches(dtypes=(torch.float64,)), mode=aggs, per_token=st.booleans())
@example(b=UNEQUAL, mode="seq-mean-token-sum", per_token=False)
def test_policy_gradient_loss_aggregates_minus_advantage_times_logp(rf, b, mode, per_token):
    logp = b.randn().requires_grad_(True)
    adv = b.randn() if per_token else b.randn(b.B)
    loss = rf.policy_gradient_loss(logp, adv, b.mask, mode)
    A = adv if per_token else adv.unsqueeze(1).expand(b.B, b.T)
    assert_close(loss, _aggregate_loop(-A * logp.detach(), b.lengths, mode), TOL, "loss value")
    # d loss / d logp_t = -A_t * (aggregation weight of token t), exactly 0 at padding
    (grad,) = torch.autograd.grad(loss, logp)
    weight = torch.zeros(b.B, b.T, dtype=torch.float64)
    for row, n in enumerate(b.lengths):
        weight[row, :n] = {"token-mean": 1 / sum(b.lengths), "seq-mean-token-mean": 1 / (b.B * n),
                           "seq-mean-token-sum": 1 / b.B,
                           "seq-mean-token-sum-norm": 1 / (b.B * b.T)}[mode]
    assert_close(grad, -A * weight, TOL, "d loss / d logp")


# --- PPO -----------------------------------------------------------------------------------------

@st.composite
def ppo_tokens(draw):
    """Tokens with log-ratios spread over both sides of the clip range, both advantage signs."""
    b = draw(padded_batches(dtypes=(torch.float64,)))
    clip_low = draw(st.sampled_from([0.1, 0.2]))
    clip_high = draw(st.sampled_from([None, 0.28, 0.5]))
    dual = draw(st.sampled_from([None, 1.5, 3.0]))
    return b, clip_low, clip_high, dual


def _ppo_case(b):
    old = b.randn(scale=0.5) - 2.0
    log_ratio = b.uniform(-1.2, 1.2)
    adv = b.randn()
    adv = torch.where(adv.abs() < 1e-3, torch.full_like(adv, 0.5), adv)   # no A = 0 ties
    return old, log_ratio, adv


@against("ppo_min_max_swapped", "ppo_clip_high_ignored", "ppo_dual_clip_on_positive_advantages",
         "ppo_dual_clip_max")
@given(case=ppo_tokens())
@example(case=(UNEQUAL, 0.2, 0.28, 3.0))
@example(case=(Padded([4, 4], 4, seed=2, dtype=torch.float64), 0.2, 0.5, 1.5))
def test_ppo_token_gradient_is_zero_exactly_where_the_clipped_branch_is_taken(rf, case):
    """d loss / d logp_t = -A r / N unless (A > 0, r > 1 + eps_high), (A < 0, r < 1 - eps_low),
    or (dual clip c, A < 0, r > c): then exactly 0 (PPO Eq. 7; DAPO Eq. 10; dual-clip PPO)."""
    b, clip_low, clip_high, dual = case
    old, log_ratio, A = _ppo_case(b)
    logp = (old + log_ratio).requires_grad_(True)
    r = torch.exp(log_ratio)
    high = clip_low if clip_high is None else clip_high
    # keep away from the kinks, where the one-sided derivative is a convention
    kinks = [1 + high, 1 - clip_low] + ([dual] if dual else [])
    near = torch.stack([(r - k).abs() < 1e-6 for k in kinks]).any(0)
    A = torch.where(near, torch.zeros_like(A) + 0.5, A)
    r = torch.where(near, torch.ones_like(r), r)
    logp = torch.where(near, old, logp.detach()).requires_grad_(True)

    loss = rf.ppo_clip_loss(logp, old, A, b.mask, clip_low, clip_high, dual, "token-mean")
    (grad,) = torch.autograd.grad(loss, logp)
    clipped = ((A > 0) & (r > 1 + high)) | ((A < 0) & (r < 1 - clip_low))
    if dual is not None:
        clipped |= (A < 0) & (r > dual)
    N = sum(b.lengths)
    expected = torch.where(b.mask & ~clipped, -A * r / N, torch.zeros_like(r))
    assert_close(grad, expected, TOL, "d ppo_clip_loss / d logp per token")
    # and the value: the pessimistic bound, floored by -c A where A < 0
    per_token = torch.maximum(-A * r, -A * r.clamp(1 - clip_low, 1 + high))
    if dual is not None:
        per_token = torch.where(A < 0, torch.minimum(per_token, -dual * A), per_token)
    assert_close(loss, per_token[b.mask].sum() / N, TOL, "ppo_clip_loss value")


@against("ppo_ratio_inverted")
@given(b=padded_batches(dtypes=(torch.float64,)), mode=aggs,
       dual=st.sampled_from([None, 2.0]), per_token=st.booleans())
@example(b=UNEQUAL, mode="token-mean", dual=None, per_token=False)
def test_ppo_gradient_equals_policy_gradient_at_the_old_policy(rf, b, mode, dual, per_token):
    """At theta = theta_old (r = 1) nothing is clipped: grad L^CLIP = grad L^PG (PPO Sec. 3)."""
    old = b.randn() - 1.0
    adv = b.randn() if per_token else b.randn(b.B)
    logp = old.clone().requires_grad_(True)
    (g_ppo,) = torch.autograd.grad(rf.ppo_clip_loss(logp, old, adv, b.mask, 0.2, 0.28, dual, mode),
                                   logp)
    logp2 = old.clone().requires_grad_(True)
    (g_pg,) = torch.autograd.grad(rf.policy_gradient_loss(logp2, adv, b.mask, mode), logp2)
    assert_close(g_ppo, g_pg, TOL, "grad of PPO vs grad of the policy-gradient loss at r = 1")


@against("value_clip_min", "value_loss_no_half")
@given(b=padded_batches(dtypes=(torch.float64,)), clip=st.sampled_from([None, 0.1, 0.5]))
@example(b=UNEQUAL, clip=0.2)
def test_value_loss_gradient_is_zero_exactly_where_the_clipped_error_dominates(rf, b, clip):
    V_old, R = b.randn(), b.randn()
    V = (V_old + b.uniform(-1.0, 1.0)).requires_grad_(True)
    loss = rf.value_loss(V, V_old, R, b.mask, clip, "token-mean")
    (grad,) = torch.autograd.grad(loss, V)
    Vd = V.detach()
    err = (Vd - R) ** 2
    N = sum(b.lengths)
    if clip is None:
        frozen = torch.zeros_like(b.mask)
        per_token = 0.5 * err
    else:
        V_clip = V_old + (Vd - V_old).clamp(-clip, clip)
        err_clip = (V_clip - R) ** 2
        frozen = err_clip > err                          # the clipped branch, constant in V
        per_token = 0.5 * torch.maximum(err, err_clip)
    assert_close(loss, per_token[b.mask].sum() / N, TOL, "value_loss value (0.5 squared error)")
    expected = torch.where(b.mask & ~frozen, (Vd - R) / N, torch.zeros_like(Vd))
    assert_close(grad, expected, TOL, "d value_loss / d V per token")
