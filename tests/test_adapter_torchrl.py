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
