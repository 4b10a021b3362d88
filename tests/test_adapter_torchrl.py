"""The bundled torchrl adapters (conformance/adapters/torchrl.py) certify cleanly: no fail, no
error, every declared deviation still occurs, every declaration cites torchrl's file and line.

Skipped unless torchrl is installed (its own environment: pip install torch==2.13.0, then
pip install torchrl==0.14.1)."""

import re

import pytest

pytest.importorskip("torchrl", reason="torchrl is not installed (pip install torchrl==0.14.1)")

import torch  # noqa: E402

import refimpl  # noqa: E402
from conformance.adapters import torchrl as tr  # noqa: E402
from tests.adapter_suite import (assert_conforms, assert_every_declaration_occurs,  # noqa: E402
                                 certified)

VARIANTS = [tr.torchrl, tr.torchrl_prompt_mean, tr.torchrl_dapo]
IDS = [v.name for v in VARIANTS]
FILE_LINE = re.compile(r"[\w/]+\.py:\d+")


@pytest.fixture(params=VARIANTS, ids=IDS)
def report(request, tmp_path_factory):
    adapter = request.param
    return adapter, certified(adapter, tmp_path_factory)


def test_certifies_without_fail_or_error_or_warning(report):
    assert_conforms(report[1])


def test_every_declared_deviation_occurs(report):
    assert_every_declaration_occurs(*report)



def test_plain_variants_aggregate_as_torchrls_default():
    """The capabilities of torchrl and torchrl-dapo are declared from the pinned default."""
    for adapter in (tr.torchrl, tr.torchrl_dapo):
        assert adapter._aggregation() == tr.DEFAULT_AGGREGATION
        assert adapter.capabilities["agg"] == [adapter._canonical_agg()]
    assert tr.torchrl_prompt_mean.capabilities["agg"] == ["seq-mean-token-mean"]


def test_framework_defaults_read_from_torchrl(report):
    adapter, data = report
    d = data["framework_defaults"]
    assert d == adapter.framework_defaults()
    assert {"clip_low", "clip_high", "kl_beta", "kl_estimator", "kl_in", "gae_lambda", "gamma",
            "group_size", "loss_agg", "adv_eps"} <= set(d)
    assert d["kl_estimator"] == "k3"


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
def test_declarations_cite_file_and_line(adapter):
    for what, sentence in {**adapter.shims, **adapter.known_deviations}.items():
        assert FILE_LINE.search(sentence), f"{adapter.name} {what}: no file.py:LINE in {sentence!r}"
        assert "torchrl 0.14.1" in sentence, f"{adapter.name} {what}: no pinned version"


# The declared padding deviations of gae and discounted_returns (no mask in torchrl) must not
# hide a wrong value on the real tokens: those are compared with refimpl here.
MASK = torch.arange(6).unsqueeze(0) < torch.tensor([3, 1, 5, 2, 6]).unsqueeze(1)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.0), (0.99, 1.0)])
def test_gae_and_returns_match_refimpl_on_real_tokens(gamma, lam):
    g = torch.Generator().manual_seed(0)
    r, v = (torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    adv, ret = tr.torchrl.gae(r, v, MASK, gamma, lam)
    want_adv, want_ret = refimpl.gae(r, v, MASK, gamma, lam)
    # torchrl forms gamma * (1 - terminated) in float32 (functional.py:170): float32-accurate
    torch.testing.assert_close(adv[MASK], want_adv[MASK], rtol=0, atol=1e-6)
    torch.testing.assert_close(ret[MASK], want_ret[MASK], rtol=0, atol=1e-6)
    out = tr.torchrl.discounted_returns(r, MASK, gamma)
    torch.testing.assert_close(out[MASK], refimpl.discounted_returns(r, MASK, gamma)[MASK])


# The options each variant honours (k3, its own aggregation, no dual clip) are also compared with
# refimpl here, padding included.
def _dirty(x, fill):
    return torch.where(MASK, x, torch.full_like(x, fill))


@pytest.mark.parametrize("fill", [0.0, float("nan"), 1e30])
def test_k3_matches_refimpl(fill):
    g = torch.Generator().manual_seed(1)
    logp, ref = (torch.randn(5, 6, generator=g, dtype=torch.float64) - 1 for _ in range(2))
    out = tr.torchrl.kl_estimate(_dirty(logp, fill), _dirty(ref, fill), MASK, "k3")
    torch.testing.assert_close(out, refimpl.kl_estimate(logp, ref, MASK, "k3"))


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
@pytest.mark.parametrize("clip_high", [None, 0.28])
def test_ppo_clip_loss_and_aggregate_match_refimpl(adapter, clip_high):
    g = torch.Generator().manual_seed(2)
    old = 0.3 * torch.randn(5, 6, generator=g, dtype=torch.float64) - 1.5
    logp = (old + 0.4 * torch.randn(5, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    A = torch.randn(5, 6, generator=g, dtype=torch.float64)
    agg = adapter._canonical_agg()
    got = adapter.ppo_clip_loss(logp, old, A, MASK, 0.2, clip_high, None, agg)
    want = refimpl.ppo_clip_loss(logp, old, A, MASK, 0.2, clip_high, None, agg)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)   # clip bounds are float32 buffers
    (g_got,), (g_want,) = torch.autograd.grad(got, logp), torch.autograd.grad(want, logp)
    torch.testing.assert_close(g_got, g_want, rtol=1e-7, atol=1e-7)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(adapter.aggregate(x, MASK, agg), refimpl.aggregate(x, MASK, agg))


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
def test_ppo_clip_loss_drops_non_finite_old_logp_as_grpo_loss_does(adapter):
    """The declared shim does exactly what GRPOLoss._log_weight does (grpo.py:961-967): a token
    whose behaviour log-prob is not finite leaves the mask, so the loss equals the loss with
    that token masked out by the caller."""
    g = torch.Generator().manual_seed(3)
    old = 0.3 * torch.randn(2, 4, generator=g, dtype=torch.float64) - 1.5
    logp = old + 0.2 * torch.randn(2, 4, generator=g, dtype=torch.float64)
    A = torch.randn(2, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 4, dtype=torch.bool)
    agg = adapter._canonical_agg()
    holed = old.clone()
    holed[0, 1] = float("-inf")
    narrowed = mask.clone()
    narrowed[0, 1] = False
    got = adapter.ppo_clip_loss(logp, holed, A, mask, agg=agg)
    want = adapter.ppo_clip_loss(logp, old, A, narrowed, agg=agg)
    assert torch.isfinite(got) and torch.equal(got, want)


# Every example number in a declaration is re-run here on torchrl's own code.

def test_the_float32_discount_example_is_what_torchrl_gives():
    """gae/lam-*: one step of generalized_advantage_estimate whose advantage is gamma times a
    next value of 1 (float64 in, lam = 0) gives the float32 gamma the sentence states."""
    sentence = tr.torchrl.known_deviations["gae/lam-zero-gives-td-error"]
    found = re.search(r"gamma = ([\d.]+) enters as ([\d.]+)", sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    gamma, stated = (float(x) for x in found.groups())
    from torchrl.objectives.value.functional import generalized_advantage_estimate
    done = torch.tensor([[False, True]]).unsqueeze(-1)
    zero = torch.zeros(1, 2, 1, dtype=torch.float64)
    next_value = torch.tensor([[1.0, 0.0]], dtype=torch.float64).unsqueeze(-1)
    adv, _ = generalized_advantage_estimate(gamma, 0.0, zero, next_value, zero, done, done.clone())
    assert adv.dtype == torch.float64 and float(adv[0, 0, 0]) == stated != gamma, (adv, sentence)
    assert float(torch.tensor(gamma, dtype=torch.float32)) == stated


def test_the_gamma_zero_example_is_what_torchrl_gives():
    """discounted_returns/gamma-zero-gives-rewards: reward2go raises IndexError at gamma = 0 and
    at the stated gamma below its threshold, and not at a gamma well above it."""
    sentence = tr.torchrl.known_deviations["discounted_returns/gamma-zero-gives-rewards"]
    found = re.search(r"e\.g\. gamma = ([\de.+-]+)", sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    r = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    for gamma in (0.0, float(found.group(1))):
        with pytest.raises(IndexError):
            tr.torchrl.discounted_returns(r, mask, gamma)
    torch.testing.assert_close(tr.torchrl.discounted_returns(r, mask, 0.5),
                               refimpl.discounted_returns(r, mask, 0.5))


def test_the_truncated_series_example_is_what_torchrl_gives():
    """discounted_returns/small-gamma-keeps-every-term: the stated gamma, rewards, torchrl's
    return and the contract's, re-run."""
    sentence = tr.torchrl.known_deviations["discounted_returns/small-gamma-keeps-every-term"]
    found = re.search(r"at gamma = ([\de.+-]+) the rewards \(([-\d., ]+)\) return ([\d.]+) where "
                      r"the contract's return is ([\d.]+)", sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    gamma, stated, want = float(found.group(1)), float(found.group(3)), float(found.group(4))
    r = torch.tensor([[float(x) for x in found.group(2).split(",")]], dtype=torch.float64)
    mask = torch.ones_like(r, dtype=torch.bool)
    assert float(tr.torchrl.discounted_returns(r, mask, gamma)[0, 0]) == pytest.approx(stated, abs=1e-12)
    assert float(refimpl.discounted_returns(r, mask, gamma)[0, 0]) == pytest.approx(want, abs=1e-12)


def test_the_float32_clip_bound_example_is_what_torchrl_gives():
    """ppo_clip_loss/*: the ratio GRPOLoss clips to at the stated clip_high, and the one-token
    loss (log-ratio 25, so clipped) of the stated advantage, torchrl's and the contract's."""
    sentence = tr.torchrl.known_deviations["ppo_clip_loss/log-ratios-beyond-20"]
    found = re.search(r"with clip_high = ([\d.]+) a ratio clipped above is ([\d.]+) and the loss of "
                      r"one token with A = ([\d.]+) is (-?[\d.]+) where the contract's is (-?[\d.]+)",
                      sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    high, ratio, A, loss_stated, want_stated = (float(x) for x in found.groups())
    for adapter in VARIANTS:
        module = adapter._loss_module(0.2, high)
        assert float(module._clip_bounds[1].double().exp()) == ratio
        logp = torch.tensor([[-0.5]], dtype=torch.float64)
        args = (logp, logp - 25.0, torch.tensor([A], dtype=torch.float64),
                torch.ones(1, 1, dtype=torch.bool), 0.2, high, None, adapter._canonical_agg())
        assert float(adapter.ppo_clip_loss(*args)) == loss_stated
        assert float(refimpl.ppo_clip_loss(*args)) == want_stated


def test_one_cause_one_sentence():
    """Checks failing for one cause share one declared sentence (reports group by sentence)."""
    d = tr.torchrl.known_deviations
    for ids in (("group_normalized_advantages/matches-reference",
                 "group_normalized_advantages/std-is-per-group",
                 "group_normalized_advantages/exact-std-normalisation-bias"),
                ("gae/lam-zero-gives-td-error", "gae/lam-one-gives-return-minus-value",
                 "gae/exact-advantage-with-true-values"),
                ("ppo_clip_loss/matches-reference", "ppo_clip_loss/log-ratios-beyond-20")):
        assert len({d[i] for i in ids}) == 1, ids


def test_std_clamp_is_the_only_group_difference():
    """The declared std guard must not hide another difference: with a std above 1e-6,
    MCAdvantage's advantages equal refimpl's with eps = 0 (std not shifted) exactly."""
    scores = torch.randn(7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = torch.tensor([3, 1, 3, 1, 2, 2, 3])
    got = tr.torchrl.group_normalized_advantages(scores, ids)
    torch.testing.assert_close(got, refimpl.group_normalized_advantages(scores, ids, "group", 0.0),
                               rtol=1e-15, atol=1e-15)
