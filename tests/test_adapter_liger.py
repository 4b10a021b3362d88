"""The bundled Liger Kernel adapters (conformance/adapters/liger.py) certify cleanly: no fail, no
error, every declared deviation still occurs, every declaration cites Liger's file and line.

Skipped unless Liger Kernel is installed (its own environment: pip install torch==2.13.0, then
pip install liger-kernel==0.8.5, which brings triton; torch stays 2.13.0+cpu)."""

import re

import pytest

pytest.importorskip("liger_kernel", reason="Liger Kernel is not installed (pip install liger-kernel==0.8.5)")

import torch  # noqa: E402

import refimpl  # noqa: E402
from conformance import Unsupported  # noqa: E402
from conformance.adapters import liger as lg  # noqa: E402
from tests.adapter_suite import (assert_conforms, assert_delta_example,  # noqa: E402
                                 assert_every_declaration_occurs, stated_numbers,
                                 certified)

VARIANTS = [lg.liger, lg.liger_grpo, lg.liger_dr_grpo, lg.liger_dapo, lg.liger_bnpo, lg.liger_dpo]
IDS = [v.name for v in VARIANTS]
GRPO_VARIANTS = [lg.liger, lg.liger_grpo, lg.liger_dr_grpo, lg.liger_dapo, lg.liger_bnpo]
FILE_LINE = re.compile(r"[\w/]+\.py:\d+")


@pytest.fixture(params=VARIANTS, ids=IDS)
def report(request, tmp_path_factory):
    adapter = request.param
    return adapter, certified(adapter, tmp_path_factory)


def test_certifies_without_fail_or_error_or_warning(report):
    assert_conforms(report[1])


def test_every_declared_deviation_occurs(report):
    assert_every_declaration_occurs(*report)


def test_framework_defaults_read_from_liger(report):
    from liger_kernel.chunked_loss.grpo_loss import LigerFusedLinearGRPOLoss
    adapter, data = report
    d = data["framework_defaults"]
    assert d == adapter.framework_defaults()
    assert {"clip_low", "clip_high", "kl_beta", "kl_estimator", "kl_in", "gae_lambda", "gamma",
            "group_size", "loss_agg", "adv_eps"} <= set(d)
    assert d["kl_estimator"] == "k3"
    if adapter.name in ("liger", "liger-dpo"):
        assert d["loss_type"] == LigerFusedLinearGRPOLoss().loss_type


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
def test_declarations_cite_file_and_line(adapter):
    for what, sentence in {**adapter.shims, **adapter.known_deviations}.items():
        assert FILE_LINE.search(sentence), f"{adapter.name} {what}: no file.py:LINE in {sentence!r}"
        assert f"liger-kernel {lg.LIGER}" in sentence, f"{adapter.name} {what}: no pinned version"


def test_plain_variant_is_ligers_default_loss_type():
    from liger_kernel.chunked_loss.grpo_loss import LigerFusedLinearGRPOLoss
    assert lg.liger._loss_type() == LigerFusedLinearGRPOLoss().loss_type
    # the plain variant's capabilities are declared from the pinned default
    assert lg.DEFAULT_LOSS_TYPE == lg.liger._loss_type()
    assert lg.liger.capabilities["agg"] == [lg.LOSS_TYPE_AGG[lg.liger._loss_type()]]
    m = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(Unsupported):
        lg.liger_grpo.ppo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), m,
                                    agg="token-mean")


@pytest.mark.parametrize("adapter", GRPO_VARIANTS, ids=[v.name for v in GRPO_VARIANTS])
@pytest.mark.parametrize("options", [{}, {"clip_high": 0.28}, {"dual_clip": 3.0}, {"norm_len": 9}])
def test_ppo_clip_loss_with_sequence_advantages_matches_refimpl(adapter, options):
    """The certification's generic ppo_clip_loss checks draw (B, T) advantages, which Liger has no
    slot for (Unsupported); with one advantage per sequence, Liger's values and gradients are
    refimpl's for the aggregation of each loss_type, to float32 precision (old_logp goes in as
    float32, as Liger's trainer passes it)."""
    agg = lg.LOSS_TYPE_AGG[adapter._loss_type()]
    if "norm_len" in options and agg != "seq-mean-token-sum-norm":
        pytest.skip("norm_len matters for seq-mean-token-sum-norm only")
    g = torch.Generator().manual_seed(1)
    mask = torch.arange(6).unsqueeze(0) < torch.tensor([3, 1, 5, 2]).unsqueeze(1)
    old = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.3 - 1.5
    logp = (old + torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.3).requires_grad_(True)
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    got = adapter.ppo_clip_loss(logp, old, adv, mask, agg=agg, **options)
    want = refimpl.ppo_clip_loss(logp, old, adv, mask, agg=agg, **options)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    (g_got,) = torch.autograd.grad(got, logp)
    (g_want,) = torch.autograd.grad(want, logp)
    torch.testing.assert_close(g_got, g_want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("adapter", GRPO_VARIANTS, ids=[v.name for v in GRPO_VARIANTS])
def test_ppo_clip_loss_padding_reaches_the_loss(adapter):
    """Recorded here because the certification's padding checks draw (B, T) advantages and skip:
    Liger multiplies the per-token loss by the mask (grpo_loss.py:227-241), so NaN at a padded
    position makes the loss NaN, where the contract wants it unchanged."""
    agg = lg.LOSS_TYPE_AGG[adapter._loss_type()]
    mask = torch.tensor([[True, True, False], [True, False, False]])
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logp = torch.tensor([[-0.9, -1.1, float("nan")], [-1.2, float("nan"), float("nan")]],
                        dtype=torch.float64)
    adv = torch.tensor([0.5, -0.7], dtype=torch.float64)
    assert torch.isnan(adapter.ppo_clip_loss(logp, old, adv, mask, agg=agg))
    assert torch.isfinite(refimpl.ppo_clip_loss(logp, old, adv, mask, agg=agg))


def test_kl_estimate_is_k3_loss_fn_alone_without_a_mask_shim():
    """Liger's trainer code does not mask the KL right after k3_loss_fn (ppo_loss_fn adds it to
    the per-token loss and masks that sum in its aggregation), so the adapter applies no mask:
    every entry, padded ones included, is k3_loss_fn's, in the dtype it returns."""
    logp = torch.tensor([[-0.5, -1.5, 0.25]], dtype=torch.float64)
    ref = torch.tensor([[-0.75, -1.0, -3.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, False]])
    got = lg.liger.kl_estimate(logp, ref, mask)
    want = lg._liger().k3(ref, logp)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert got[0, 1] != 0 and "kl_estimate" not in lg.liger.shims


def test_the_delta_example_is_what_liger_gives():
    """The example in the dual-clip-inside-clip-range declaration is re-run: Liger's delta, the
    contract's dual_clip, on one token with A = +1 and one with A = -1."""
    assert_delta_example(lg.GRPO_DEVIATIONS["ppo_clip_loss/dual-clip-inside-clip-range"],
                         lg.liger_grpo.ppo_clip_loss)


def test_the_float32_old_logp_example_is_what_liger_gives():
    """The example in the float32 old log-prob declaration is re-run: the adapter's loss (old
    log-probs cast as _compute_loss_from_logps casts them) differs from the contract's by the
    relative error the sentence states, and Liger's ppo_loss_fn on the uncast float64 old
    log-probs gives the contract's value exactly (the cast is the whole difference)."""
    sentence = lg.GRPO_DEVIATIONS["ppo_clip_loss/matches-reference"]
    lp, old, old32, A, stated = map(float, stated_numbers(
        r"with logp = (-[\d.]+), an old log-prob of (-[\d.]+) \(float32: (-[\d.]+)\) and A = "
        r"([\d.]+) the loss differs from the contract's by ([\d.]+e-\d+) relative", sentence))
    logp = torch.tensor([[lp]], dtype=torch.float64)
    old_t = torch.tensor([[old]], dtype=torch.float64)
    adv = torch.tensor([A], dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert float(f"{float(old_t.float()):.9g}") == old32
    want = float(refimpl.ppo_clip_loss(logp, old_t, adv, mask, 0.2, 0.28))
    got = float(lg.liger_dapo.ppo_clip_loss(logp, old_t, adv, mask, 0.2, 0.28))
    assert float(f"{abs(got / want - 1):.2g}") == stated, (got, want)
    uncast, _ = lg._liger().GRPO.ppo_loss_fn(
        per_token_logps=logp, attention_mask=mask, advantages=adv, full_attention_mask=mask,
        old_per_token_logps=old_t, epsilon_low=0.2, epsilon_high=0.28, beta=0.0,
        loss_type="dapo", max_completion_length=1)
    assert float(uncast) == want
