"""Invalid input is a ValueError that names the argument (docs/contract.md, "Invalid arguments").

One table, OpInfo-style: each case is a call with one argument left open, a valid value for it
and an invalid one, and the argument name the error message must contain. The test first makes
the control call with the valid value (it must succeed, so a function that rejects everything
cannot pass), then the call with the invalid value (it must raise a ValueError naming the
argument). Small dedicated tests kill the mutants that accept invalid input; the last two tests
check input that must *not* be rejected (``beta = 0`` in ``kl_penalized_rewards``; masks given
as bool, int64 or float 0/1 giving identical results).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch

from tests.harness import against, assert_close, lengths_mask


# --- inputs: float64 throughout, rows of lengths 3, 1, 4 in a width of 4 ------------------------

_gen = torch.Generator().manual_seed(2024)


def _randn(*shape):
    return torch.randn(*shape, generator=_gen, dtype=torch.float64)


B, T, N, VOCAB = 3, 4, 4, 5
MASK = lengths_mask([3, 1, 4], T)
R, VAL, LOGP, OLD, REF, OLD_V, RET, ADV_BT = (_randn(B, T) for _ in range(8))
ADV_B, SCORES_B = _randn(B), _randn(B)
PC, PR, RC, RR = (_randn(N) for _ in range(4))
LOGITS = _randn(B, T, VOCAB)
TOKENS = torch.randint(0, VOCAB, (B, T), generator=_gen)
SCORES = _randn(6)
IDS = torch.tensor([7, 3, 7, 3, 9, 9])              # three groups of two, interleaved
IDS_SINGLETON = torch.tensor([7, 3, 7, 3, 9, 5])    # group 5 holds one response


def _int(x):
    return (3 * x).round().long()


def _mask_with(row, values, dtype=torch.bool):
    m = MASK.to(dtype).clone()
    m[row] = torch.tensor(values, dtype=dtype)
    return m


HOLE = _mask_with(0, [1, 0, 1, 0])                   # real tokens not a prefix
EMPTY_ROW = _mask_with(1, [0, 0, 0, 0])              # a row with no real token
TWO = _mask_with(0, [1, 2, 1, 0], torch.int64)       # a value other than 0/1
HALF = _mask_with(0, [1, 0.5, 1, 0], torch.float64)
BAD_MASKS = [("hole", HOLE), ("empty-row", EMPTY_ROW), ("int-2", TWO), ("float-half", HALF),
             ("shape", MASK[:, :-1])]


# --- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Any, Any], Any]   # call(rf, x): the function with x as the argument under test
    good: Any                         # x for the control call, which must succeed
    bad: Any                          # x for the call that must raise
    arg: str                          # the name the ValueError's message must contain


CASES: list[Case] = []


def case(id, call, good, bad, arg):
    CASES.append(Case(id, call, good, bad, arg))


# Every function that takes a mask, called with the mask open.
MASK_CALLS = {
    "discounted_returns": lambda rf, m: rf.discounted_returns(R, m, 0.9),
    "gae": lambda rf, m: rf.gae(R, VAL, m),
    "kl_estimate": lambda rf, m: rf.kl_estimate(LOGP, REF, m),
    "kl_penalized_rewards": lambda rf, m: rf.kl_penalized_rewards(SCORES_B, LOGP, REF, m, 0.1),
    "batch_normalized_advantages": lambda rf, m: rf.batch_normalized_advantages(ADV_BT, m),
    "aggregate": lambda rf, m: rf.aggregate(VAL, m),
    "policy_gradient_loss": lambda rf, m: rf.policy_gradient_loss(LOGP, ADV_B, m),
    "ppo_clip_loss": lambda rf, m: rf.ppo_clip_loss(LOGP, OLD, ADV_B, m),
    "value_loss": lambda rf, m: rf.value_loss(VAL, OLD_V, RET, m),
    "sequence_logprob": lambda rf, m: rf.sequence_logprob(LOGP, m),
}
for fn, call in MASK_CALLS.items():
    for what, bad_mask in BAD_MASKS:
        case(f"{fn}/mask-{what}", call, MASK, bad_mask, "mask")

# discounted_returns
_dr = lambda rf, x: rf.discounted_returns(x, MASK, 0.9)           # noqa: E731
case("discounted_returns/rewards-int", _dr, R, _int(R), "rewards")
case("discounted_returns/rewards-bool", _dr, R, R > 0, "rewards")
case("discounted_returns/rewards-1d", _dr, R, R[:, 0], "rewards")
_dr_gamma = lambda rf, g: rf.discounted_returns(R, MASK, gamma=g)  # noqa: E731
case("discounted_returns/gamma-negative", _dr_gamma, 0.0, -0.1, "gamma")
case("discounted_returns/gamma-above-one", _dr_gamma, 1.0, 1.01, "gamma")
case("discounted_returns/gamma-nan", _dr_gamma, 0.5, float("nan"), "gamma")

# gae
_gae_r = lambda rf, x: rf.gae(x, VAL, MASK)                       # noqa: E731
_gae_v = lambda rf, x: rf.gae(R, x, MASK)                         # noqa: E731
case("gae/values-shape", _gae_v, VAL, VAL[:, :-1], "values")
case("gae/values-more-rows", _gae_v, VAL, torch.cat([VAL, VAL[:1]]), "values")
case("gae/rewards-int", _gae_r, R, _int(R), "rewards")
case("gae/rewards-1d", _gae_r, R, R[0], "rewards")
case("gae/values-int", _gae_v, VAL, _int(VAL), "values")
case("gae/values-float32", _gae_v, VAL, VAL.float(), "values")
case("gae/rewards-float32", _gae_r, R, R.float(), "rewards")
_gae_gamma = lambda rf, g: rf.gae(R, VAL, MASK, gamma=g)          # noqa: E731
_gae_lam = lambda rf, x: rf.gae(R, VAL, MASK, lam=x)              # noqa: E731
case("gae/gamma-negative", _gae_gamma, 0.0, -0.5, "gamma")
case("gae/gamma-above-one", _gae_gamma, 1.0, 1.5, "gamma")
case("gae/lam-negative", _gae_lam, 0.0, -0.1, "lam")
case("gae/lam-above-one", _gae_lam, 1.0, 1.5, "lam")

# kl_estimate
_kl_ref = lambda rf, x: rf.kl_estimate(LOGP, x)                   # noqa: E731
_kl_logp = lambda rf, x: rf.kl_estimate(x, REF)                   # noqa: E731
case("kl_estimate/ref_logp-shape", _kl_ref, REF, REF[:, :-1], "ref_logp")
case("kl_estimate/ref_logp-int", _kl_ref, REF, _int(REF), "ref_logp")
case("kl_estimate/ref_logp-float32", _kl_ref, REF, REF.float(), "ref_logp")
case("kl_estimate/logp-int", _kl_logp, LOGP, _int(LOGP), "logp")
case("kl_estimate/logp-bool", _kl_logp, LOGP, LOGP > 0, "logp")
for k in ("k1", "k2", "k3"):
    case(f"kl_estimate/kind-unknown-vs-{k}", lambda rf, x: rf.kl_estimate(LOGP, REF, MASK, kind=x),
         k, "k4", "kind")

# kl_penalized_rewards
_kpr_s = lambda rf, x: rf.kl_penalized_rewards(x, LOGP, REF, MASK, 0.1)        # noqa: E731
_kpr_l = lambda rf, x: rf.kl_penalized_rewards(SCORES_B, x, REF, MASK, 0.1)    # noqa: E731
_kpr_r = lambda rf, x: rf.kl_penalized_rewards(SCORES_B, LOGP, x, MASK, 0.1)   # noqa: E731
case("kl_penalized_rewards/scores-shape", _kpr_s, SCORES_B, _randn(B + 1), "scores")
case("kl_penalized_rewards/scores-2d", _kpr_s, SCORES_B, SCORES_B[:, None], "scores")
case("kl_penalized_rewards/scores-int", _kpr_s, SCORES_B, _int(SCORES_B), "scores")
case("kl_penalized_rewards/scores-float32", _kpr_s, SCORES_B, SCORES_B.float(), "scores")
case("kl_penalized_rewards/logp-int", _kpr_l, LOGP, _int(LOGP), "logp")
case("kl_penalized_rewards/ref_logp-shape", _kpr_r, REF, REF[:, :-1], "ref_logp")
case("kl_penalized_rewards/ref_logp-int", _kpr_r, REF, _int(REF), "ref_logp")
case("kl_penalized_rewards/ref_logp-float32", _kpr_r, REF, REF.float(), "ref_logp")
case("kl_penalized_rewards/beta-negative",
     lambda rf, x: rf.kl_penalized_rewards(SCORES_B, LOGP, REF, MASK, x), 0.0, -0.1, "beta")
case("kl_penalized_rewards/kind-unknown",
     lambda rf, x: rf.kl_penalized_rewards(SCORES_B, LOGP, REF, MASK, 0.1, kind=x), "k3", "k0",
     "kind")

# group_normalized_advantages, for every scale, and leave_one_out_advantages
GROUP_CALLS = {
    f"group_normalized_advantages[{s}]":
        (lambda s: lambda rf, sc, ids: rf.group_normalized_advantages(sc, ids, scale=s))(s)
    for s in ("group", "batch", "none")
}
GROUP_CALLS["leave_one_out_advantages"] = lambda rf, sc, ids: rf.leave_one_out_advantages(sc, ids)
for fn, call in GROUP_CALLS.items():
    _ids = (lambda call: lambda rf, x: call(rf, SCORES, x))(call)
    _sc = (lambda call: lambda rf, x: call(rf, x, IDS))(call)
    case(f"{fn}/group-of-one", _ids, IDS, IDS_SINGLETON, "group_ids")
    case(f"{fn}/all-groups-of-one", _ids, IDS, torch.arange(6), "group_ids")
    case(f"{fn}/group_ids-shape", _ids, IDS, IDS[:-2], "group_ids")
    case(f"{fn}/group_ids-bool", _ids, IDS, IDS > 4, "group_ids")
    case(f"{fn}/group_ids-float", _ids, IDS, IDS.double(), "group_ids")
    case(f"{fn}/scores-int", _sc, SCORES, _int(SCORES), "scores")
    case(f"{fn}/scores-2d", _sc, SCORES, SCORES[:, None], "scores")
case("group_normalized_advantages/scale-unknown",
     lambda rf, x: rf.group_normalized_advantages(SCORES, IDS, scale=x), "batch", "std", "scale")
case("group_normalized_advantages/eps-negative",
     lambda rf, x: rf.group_normalized_advantages(SCORES, IDS, eps=x), 0.0, -1e-6, "eps")

# batch_normalized_advantages
_bna = lambda rf, x: rf.batch_normalized_advantages(x)                          # noqa: E731
case("batch_normalized_advantages/one-entry-no-mask", _bna, ADV_B[:2], ADV_B[:1], "advantages")
case("batch_normalized_advantages/one-real-entry",
     lambda rf, m: rf.batch_normalized_advantages(ADV_BT[:1], m),
     lengths_mask([2], T), lengths_mask([1], T), "advantages")
case("batch_normalized_advantages/advantages-int", _bna, ADV_BT, _int(ADV_BT), "advantages")
case("batch_normalized_advantages/eps-negative",
     lambda rf, x: rf.batch_normalized_advantages(ADV_BT, MASK, eps=x), 0.0, -1e-8, "eps")

# aggregate
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
case("aggregate/values-int", lambda rf, x: rf.aggregate(x, MASK), VAL, _int(VAL), "values")
case("aggregate/values-1d", lambda rf, x: rf.aggregate(x, MASK), VAL, VAL[0], "values")
case("aggregate/mode-unknown", lambda rf, x: rf.aggregate(VAL, MASK, mode=x), "seq-mean-token-sum",
     "mean", "mode")
case("aggregate/norm_len-zero",
     lambda rf, x: rf.aggregate(VAL, MASK, "seq-mean-token-sum-norm", x), 16, 0, "norm_len")
case("aggregate/norm_len-negative",
     lambda rf, x: rf.aggregate(VAL, MASK, "seq-mean-token-sum-norm", x), 16, -4, "norm_len")

# policy_gradient_loss
_pg_a = lambda rf, x: rf.policy_gradient_loss(LOGP, x, MASK)                    # noqa: E731
_pg_l = lambda rf, x: rf.policy_gradient_loss(x, ADV_B, MASK)                   # noqa: E731
case("policy_gradient_loss/advantages-B-plus-one", _pg_a, ADV_B, _randn(B + 1), "advantages")
case("policy_gradient_loss/advantages-T", _pg_a, ADV_B, _randn(T), "advantages")
case("policy_gradient_loss/advantages-BT-shape", _pg_a, ADV_BT, ADV_BT[:, :-1], "advantages")
case("policy_gradient_loss/advantages-int", _pg_a, ADV_B, _int(ADV_B), "advantages")
case("policy_gradient_loss/advantages-float32", _pg_a, ADV_BT, ADV_BT.float(), "advantages")
case("policy_gradient_loss/logp-int", _pg_l, LOGP, _int(LOGP), "logp")
case("policy_gradient_loss/logp-float32", _pg_l, LOGP, LOGP.float(), "logp")
case("policy_gradient_loss/agg-unknown",
     lambda rf, x: rf.policy_gradient_loss(LOGP, ADV_B, MASK, agg=x), "seq-mean-token-mean",
     "sum", "agg")

# ppo_clip_loss
_ppo_o = lambda rf, x: rf.ppo_clip_loss(LOGP, x, ADV_B, MASK)                   # noqa: E731
_ppo_a = lambda rf, x: rf.ppo_clip_loss(LOGP, OLD, x, MASK)                     # noqa: E731
_ppo_l = lambda rf, x: rf.ppo_clip_loss(x, OLD, ADV_B, MASK)                    # noqa: E731
_ppo_kw = lambda **kw: lambda rf, x: rf.ppo_clip_loss(LOGP, OLD, ADV_B, MASK,  # noqa: E731
                                                      **{k: x for k in kw})
case("ppo_clip_loss/old_logp-shape", _ppo_o, OLD, OLD[:, :-1], "old_logp")
case("ppo_clip_loss/old_logp-int", _ppo_o, OLD, _int(OLD), "old_logp")
case("ppo_clip_loss/old_logp-float32", _ppo_o, OLD, OLD.float(), "old_logp")
case("ppo_clip_loss/logp-int", _ppo_l, LOGP, _int(LOGP), "logp")
case("ppo_clip_loss/advantages-B-plus-one", _ppo_a, ADV_B, _randn(B + 1), "advantages")
case("ppo_clip_loss/advantages-T", _ppo_a, ADV_B, _randn(T), "advantages")
case("ppo_clip_loss/advantages-BT-shape", _ppo_a, ADV_BT, _randn(B, T + 1), "advantages")
case("ppo_clip_loss/advantages-int", _ppo_a, ADV_B, _int(ADV_B), "advantages")
for bad in (1.0, 0.5, 0.0, -2.0):
    case(f"ppo_clip_loss/dual_clip-{bad}", _ppo_kw(dual_clip=1), 3.0, bad, "dual_clip")
case("ppo_clip_loss/clip_low-negative", _ppo_kw(clip_low=1), 0.0, -0.1, "clip_low")
case("ppo_clip_loss/clip_high-negative", _ppo_kw(clip_high=1), 0.28, -0.1, "clip_high")
case("ppo_clip_loss/agg-unknown", _ppo_kw(agg=1), "seq-mean-token-sum-norm", "token-sum", "agg")

# value_loss
_vl_o = lambda rf, x: rf.value_loss(VAL, x, RET, MASK)                          # noqa: E731
_vl_r = lambda rf, x: rf.value_loss(VAL, OLD_V, x, MASK)                        # noqa: E731
_vl_v = lambda rf, x: rf.value_loss(x, OLD_V, RET, MASK)                        # noqa: E731
case("value_loss/old_values-shape", _vl_o, OLD_V, OLD_V[:, :-1], "old_values")
case("value_loss/returns-shape", _vl_r, RET, RET[:-1], "returns")
case("value_loss/values-int", _vl_v, VAL, _int(VAL), "values")
case("value_loss/returns-float32", _vl_r, RET, RET.float(), "returns")
case("value_loss/agg-unknown", lambda rf, x: rf.value_loss(VAL, OLD_V, RET, MASK, agg=x),
     "token-mean", "seq-sum", "agg")
case("value_loss/clip-negative", lambda rf, x: rf.value_loss(VAL, OLD_V, RET, MASK, clip=x),
     0.2, -0.2, "clip")

# bradley_terry_loss
_bt_r = lambda rf, x: rf.bradley_terry_loss(PC, x)                              # noqa: E731
_bt_c = lambda rf, x: rf.bradley_terry_loss(x, PR)                              # noqa: E731
_bt_m = lambda rf, x: rf.bradley_terry_loss(PC, PR, margin=x)                   # noqa: E731
case("bradley_terry_loss/rejected_rewards-shape", _bt_r, PR, _randn(N + 1), "rejected_rewards")
case("bradley_terry_loss/chosen_rewards-int", _bt_c, PC, _int(PC), "chosen_rewards")
case("bradley_terry_loss/rejected_rewards-float32", _bt_r, PR, PR.float(), "rejected_rewards")
case("bradley_terry_loss/margin-shape", _bt_m, RR, _randn(N - 1), "margin")
case("bradley_terry_loss/margin-float32", _bt_m, RR, RR.float(), "margin")
case("bradley_terry_loss/margin-bool", _bt_m, 0.5, RR > 0, "margin")
case("bradley_terry_loss/margin-str", _bt_m, None, "one", "margin")

# dpo_loss and ipo_loss: each of the four pair tensors in turn
PAIR_NAMES = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
              "ref_rejected_logps")
for fn, extra in (("dpo_loss", {"beta": 0.1}), ("ipo_loss", {"tau": 0.1})):
    for i, name in enumerate(PAIR_NAMES):
        def pair_call(rf, x, fn=fn, i=i, extra=extra):
            args = [PC, PR, RC, RR]
            args[i] = x
            return getattr(rf, fn)(*args, **extra)
        good = (PC, PR, RC, RR)[i]
        case(f"{fn}/{name}-N-plus-one", pair_call, good, _randn(N + 1), name)
        case(f"{fn}/{name}-N-minus-one", pair_call, good, good[:-1], name)
        case(f"{fn}/{name}-int", pair_call, good, _int(good), name)
        case(f"{fn}/{name}-float32", pair_call, good, good.float(), name)
_dpo_kw = lambda k: lambda rf, x: rf.dpo_loss(PC, PR, RC, RR, **{k: x})          # noqa: E731
case("dpo_loss/beta-zero", _dpo_kw("beta"), 0.5, 0.0, "beta")
case("dpo_loss/beta-negative", _dpo_kw("beta"), 0.5, -0.1, "beta")
case("dpo_loss/label_smoothing-above-one", _dpo_kw("label_smoothing"), 0.1, 1.5,
     "label_smoothing")
_ipo_tau = lambda rf, x: rf.ipo_loss(PC, PR, RC, RR, tau=x)                      # noqa: E731
case("ipo_loss/tau-zero", _ipo_tau, 0.5, 0.0, "tau")
case("ipo_loss/tau-negative", _ipo_tau, 0.5, -0.1, "tau")

# token_logprobs and sequence_logprob
_tl_t = lambda rf, x: rf.token_logprobs(LOGITS, x)                              # noqa: E731
_tl_l = lambda rf, x: rf.token_logprobs(x, TOKENS)                              # noqa: E731
_top = TOKENS.clone()
_top[1, 2] = VOCAB
_neg = TOKENS.clone()
_neg[2, 0] = -1
case("token_logprobs/tokens-equal-to-vocab", _tl_t, TOKENS, _top, "tokens")
case("token_logprobs/tokens-negative", _tl_t, TOKENS, _neg, "tokens")
case("token_logprobs/tokens-shape", _tl_t, TOKENS, TOKENS[:, :-1], "tokens")
case("token_logprobs/tokens-float", _tl_t, TOKENS, TOKENS.double(), "tokens")
case("token_logprobs/tokens-bool", _tl_t, TOKENS, TOKENS > 2, "tokens")
case("token_logprobs/logits-int", _tl_l, LOGITS, _int(LOGITS), "logits")
case("token_logprobs/logits-2d", _tl_l, LOGITS, LOGITS[:, :, 0], "logits")
_sl = lambda rf, x: rf.sequence_logprob(x, MASK)                                # noqa: E731
case("sequence_logprob/token_logp-int", _sl, LOGP, _int(LOGP), "token_logp")
case("sequence_logprob/token_logp-1d", _sl, LOGP, LOGP[0], "token_logp")

assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"


def _names(arg: str) -> str:
    """The argument's name as a whole word: 'values' does not match inside 'old_values'."""
    return rf"(?<![A-Za-z0-9_]){re.escape(arg)}(?![A-Za-z0-9_])"


def _control(rf, c: Case):
    try:
        c.call(rf, c.good)
    except ValueError as exc:
        pytest.fail(f"{c.id}: the control call with a valid {c.arg} was rejected: {exc}")


@against()
@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_invalid_argument_is_a_value_error_naming_it(rf, c):
    _control(rf, c)
    with pytest.raises(ValueError, match=_names(c.arg)):
        c.call(rf, c.bad)


@against()
def test_table_covers_every_canonical_function(rf):
    import refimpl
    covered = {c.id.split("/")[0].split("[")[0] for c in CASES}
    assert covered == set(refimpl.CANONICAL), sorted(set(refimpl.CANONICAL) ^ covered)


# --- the mutants that accept invalid input -------------------------------------------------------

@against("gae_accepts_any_lambda")
def test_gae_rejects_lambda_outside_the_unit_interval(rf):
    for lam in (0.0, 1.0):
        rf.gae(R, VAL, MASK, gamma=0.9, lam=lam)
    for lam in (-0.1, 1.5):
        with pytest.raises(ValueError, match=_names("lam")):
            rf.gae(R, VAL, MASK, gamma=0.9, lam=lam)


@against("group_accepts_singleton")
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_of_one_is_rejected_for_every_scale(rf, scale):
    rf.group_normalized_advantages(SCORES, IDS, scale=scale)
    with pytest.raises(ValueError, match=_names("group_ids")):
        rf.group_normalized_advantages(SCORES, IDS_SINGLETON, scale=scale)


@against("dpo_accepts_nonpositive_beta")
def test_dpo_rejects_nonpositive_beta(rf):
    rf.dpo_loss(PC, PR, RC, RR, beta=1e-3)
    for beta in (0.0, -0.1):
        with pytest.raises(ValueError, match=_names("beta")):
            rf.dpo_loss(PC, PR, RC, RR, beta=beta)


@against("ppo_accepts_dual_clip_le_one")
def test_ppo_rejects_dual_clip_at_most_one(rf):
    rf.ppo_clip_loss(LOGP, OLD, ADV_B, MASK, dual_clip=1.01)
    for c in (1.0, 0.5):
        with pytest.raises(ValueError, match=_names("dual_clip")):
            rf.ppo_clip_loss(LOGP, OLD, ADV_B, MASK, dual_clip=c)


@against("aggregate_accepts_holes")
@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregate_rejects_a_mask_with_a_hole(rf, mode):
    rf.aggregate(VAL, MASK, mode)
    with pytest.raises(ValueError, match=_names("mask")):
        rf.aggregate(VAL, HOLE, mode)


# --- input that must be accepted -----------------------------------------------------------------

@against("score_at_padded_end")
def test_kl_penalty_with_beta_zero_is_accepted_and_leaves_only_the_scores(rf):
    out = rf.kl_penalized_rewards(SCORES_B, LOGP, REF, MASK, beta=0.0)
    last = MASK.sum(1) - 1
    expected = torch.zeros(B, T, dtype=torch.float64)
    expected[torch.arange(B), last] = SCORES_B
    assert_close(out, expected, 0.0, "kl_penalized_rewards(beta=0): the score at each last real token")


@against()
@pytest.mark.parametrize("fn", list(MASK_CALLS))
def test_bool_int_and_float_masks_give_identical_results(rf, fn):
    call = MASK_CALLS[fn]
    want = call(rf, MASK)
    for dtype in (torch.int64, torch.float64):
        got = call(rf, MASK.to(dtype))
        for w, g in zip(want if isinstance(want, tuple) else (want,),
                        got if isinstance(got, tuple) else (got,)):
            assert g.dtype == w.dtype, f"{fn}: mask {dtype} changed the output dtype to {g.dtype}"
            assert torch.equal(g, w), f"{fn}: mask given as {dtype} changes the result"
