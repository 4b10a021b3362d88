"""The bundled verl adapters (conformance/adapters/verl.py) certify cleanly: no fail, no error,
every declared deviation still occurs, every declaration cites verl's file and line.

Skipped unless verl is installed (its own environment: pip install torch==2.13.0, then
`rlconform setup verl`, i.e. conformance/adapters/verl_install.sh: verl 0.9.1 without its
dependencies, plus the few that its core_algos needs)."""

import re

import pytest

pytest.importorskip("verl.trainer.ppo.core_algos",
                    reason="verl is not installed (rlconform setup verl)")

import torch  # noqa: E402

import refimpl  # noqa: E402
from conformance import Unsupported  # noqa: E402
from conformance.adapters import verl as vl  # noqa: E402
from tests.adapter_suite import (assert_conforms, assert_every_declaration_occurs,  # noqa: E402
                                 certified)

VARIANTS = list(vl.VARIANTS)
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



def test_framework_defaults_read_from_verl(report):
    from verl.workers.config import ActorConfig
    adapter, data = report
    d = data["framework_defaults"]
    assert d == adapter.framework_defaults()
    assert {"clip_low", "clip_high", "kl_beta", "kl_estimator", "kl_in", "gae_lambda", "gamma",
            "group_size", "loss_agg", "adv_eps"} <= set(d)
    assert d["loss_agg"] == ActorConfig.__dataclass_fields__["loss_agg_mode"].default


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
def test_declarations_cite_file_and_line(adapter):
    for what, sentence in {**adapter.shims, **adapter.known_deviations}.items():
        assert FILE_LINE.search(sentence), f"{adapter.name} {what}: no file.py:LINE in {sentence!r}"
        assert "verl 0.9.1" in sentence, f"{adapter.name} {what}: no pinned version"


def test_plain_variant_is_verls_default_aggregation():
    from verl.workers.config import ActorConfig
    assert vl.verl._mode() == ActorConfig.__dataclass_fields__["loss_agg_mode"].default
    # the plain variant's capabilities (and so its declarations) follow the pinned default
    assert vl.DEFAULT_AGG == vl.verl._mode() and vl.verl.capabilities["agg"] == [vl.verl._mode()]
    with pytest.raises(Unsupported):
        vl.verl_seq_mean_token_sum.aggregate(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool),
                                             "token-mean")


# The generic checks run each variant in its own aggregation (its capabilities); each variant's
# own mode is also compared with refimpl here, with every clip option, values and gradients,
# norm_len included, on padding of 0 and of 1e30.
MASK = torch.arange(6).unsqueeze(0) < torch.tensor([3, 1, 5, 2, 6]).unsqueeze(1)


def _dirty(x, fill):
    return torch.where(MASK, x, torch.full_like(x, fill))


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
@pytest.mark.parametrize("clip_high,dual_clip", [(None, None), (0.28, None), (0.28, 3.0)])
@pytest.mark.parametrize("fill", [0.0, 1e30])
def test_losses_match_refimpl_in_the_variants_own_mode(adapter, clip_high, dual_clip, fill):
    agg = adapter._mode()
    g = torch.Generator().manual_seed(2)
    old = 0.3 * torch.randn(5, 6, generator=g, dtype=torch.float64) - 1.5
    lp = old + 0.6 * torch.randn(5, 6, generator=g, dtype=torch.float64)
    A = torch.randn(5, 6, generator=g, dtype=torch.float64)
    for norm_len in (None, 16):
        logp, want_logp = (_dirty(lp, fill).requires_grad_(True), lp.clone().requires_grad_(True))
        got = adapter.ppo_clip_loss(logp, _dirty(old, fill), _dirty(A, fill), MASK, 0.2, clip_high,
                                    dual_clip, agg, norm_len)
        want = refimpl.ppo_clip_loss(want_logp, old, A, MASK, 0.2, clip_high, dual_clip, agg, norm_len)
        torch.testing.assert_close(got, want)
        (g_got,), (g_want,) = torch.autograd.grad(got, logp), torch.autograd.grad(want, want_logp)
        torch.testing.assert_close(g_got, g_want)
        got = adapter.policy_gradient_loss(_dirty(lp, fill), A[:, 0], MASK, agg, norm_len)
        torch.testing.assert_close(got, refimpl.policy_gradient_loss(lp, A[:, 0], MASK, agg, norm_len))
        torch.testing.assert_close(adapter.aggregate(_dirty(A, fill), MASK, agg, norm_len),
                                   refimpl.aggregate(A, MASK, agg, norm_len))
        for clip in (None, 0.2):
            got = adapter.value_loss(_dirty(lp, fill), _dirty(old, fill), _dirty(A, fill), MASK,
                                     clip, agg, norm_len)
            torch.testing.assert_close(got, refimpl.value_loss(lp, old, A, MASK, clip, agg, norm_len))


GROUPS = [torch.tensor([7, 3, 7, 3, 9, 9, 7]), torch.tensor([1, 1, 0, 0, 0, 0, 0]),
          torch.tensor([5, 5, 5, 5, 8, 8, 8])]


@pytest.mark.parametrize("ids", GROUPS)
@pytest.mark.parametrize("scale", ["group", "none"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grpo_matches_refimpl_for_the_scales_verl_has(ids, scale, dtype):
    scores = torch.randn(len(ids), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scores = torch.where(ids == 5, torch.full_like(scores, 0.7), scores).to(dtype)
    got = vl.verl.group_normalized_advantages(scores, ids, scale)
    assert got.dtype == dtype
    torch.testing.assert_close(got, refimpl.group_normalized_advantages(scores, ids, scale))
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(vl.verl.group_normalized_advantages(scores[perm], ids[perm] * 13 - 2,
                                                                   scale), got[perm])


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.0), (0.99, 1.0)])
def test_gae_differs_from_refimpl_only_by_whitening(gamma, lam):
    """The declared gae deviations must not hide a wrong recurrence: verl's returns equal refimpl's
    on real tokens, and its advantages are refimpl's whitened over the real tokens."""
    g = torch.Generator().manual_seed(0)
    r, v = (torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    adv, ret = vl.verl.gae(r, v, MASK, gamma, lam)
    want_adv, want_ret = refimpl.gae(r, v, MASK, gamma, lam)
    torch.testing.assert_close(ret[MASK], want_ret[MASK])
    whitened = refimpl.batch_normalized_advantages(want_adv, MASK)
    # masked_mean divides by (count + 1e-8) (verl/utils/torch_functional.py:308): ~1e-9 relative
    torch.testing.assert_close(adv[MASK], whitened[MASK], rtol=1e-7, atol=1e-7)
