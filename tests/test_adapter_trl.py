"""The bundled TRL adapters (conformance/adapters/trl.py) certify cleanly: no fail, no error,
every declared deviation still occurs, every declaration cites TRL's file and line.

Skipped unless TRL is installed (its own environment: pip install torch==2.13.0, then
pip install trl==1.16.0, which brings transformers, accelerate and datasets)."""

import re

import pytest

pytest.importorskip("trl", reason="TRL is not installed (pip install trl==1.16.0)")

import torch  # noqa: E402

import refimpl  # noqa: E402
from conformance import Unsupported  # noqa: E402
from conformance.adapters import trl as tr  # noqa: E402
from tests.adapter_suite import (assert_conforms, assert_every_declaration_occurs,  # noqa: E402
                                 certified)

VARIANTS = [tr.trl, tr.trl_grpo, tr.trl_dr_grpo, tr.trl_dapo, tr.trl_bnpo, tr.trl_rloo, tr.trl_dpo,
            tr.trl_reward]
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



def test_framework_defaults_read_from_trl(report):
    from trl import GRPOConfig
    adapter, data = report
    d = data["framework_defaults"]
    assert d == adapter.framework_defaults()
    assert {"clip_low", "clip_high", "kl_beta", "kl_estimator", "kl_in", "gae_lambda", "gamma",
            "group_size", "loss_agg", "adv_eps"} <= set(d)
    assert d["adv_eps"] == 1e-4                  # probed from the advantage code path
    if adapter.name in ("trl", "trl-dapo"):
        assert d["loss_type"] == GRPOConfig.__dataclass_fields__["loss_type"].default


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
def test_declarations_cite_file_and_line(adapter):
    for what, sentence in {**adapter.shims, **adapter.known_deviations}.items():
        assert FILE_LINE.search(sentence), f"{adapter.name} {what}: no file.py:LINE in {sentence!r}"
        assert f"trl {tr.TRL}" in sentence, f"{adapter.name} {what}: no pinned version"


def test_plain_variant_is_trls_default_loss_type():
    from trl import GRPOConfig
    assert tr.trl._loss_type() == GRPOConfig.__dataclass_fields__["loss_type"].default
    # the plain variant's capabilities are declared from the pinned default
    assert tr.DEFAULT_LOSS_TYPE == tr.trl._loss_type()
    assert tr.trl.capabilities["agg"] == [tr.LOSS_TYPE_AGG[tr.trl._loss_type()]]
    with pytest.raises(Unsupported):
        tr.trl_grpo.aggregate(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool), "token-mean")


def test_group_advantages_match_refimpl_with_trls_eps():
    """On equal groups in any order TRL's advantages are refimpl's with eps = 1e-4 (TRL's
    constant), to float32 precision (TRL's reward tensor is float32)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(12, generator=g, dtype=torch.float64)
    ids = torch.tensor([5, 2, 9, 5, 2, 9, 5, 2, 9, 5, 2, 9])
    for scale in ("group", "batch", "none"):
        got = tr.trl.group_normalized_advantages(scores, ids, scale)
        want = refimpl.group_normalized_advantages(scores, ids, scale, 1e-4)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
