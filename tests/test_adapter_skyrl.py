"""The bundled skyrl-train adapters (conformance/adapters/skyrl.py) certify cleanly: no fail, no
error, every declared deviation still occurs, every declaration cites skyrl's file and line.

Skipped unless skyrl-train is installed (its own environment: pip install torch==2.13.0, then
`rlconform setup skyrl`, i.e. conformance/adapters/skyrl_install.sh: skyrl-train 0.3.1 without its
dependencies, plus ray, loguru, omegaconf and jaxtyping; the adapter loads its ppo_utils.py by path)."""

import re

import pytest

pytest.importorskip("omegaconf", reason="skyrl-train is not installed (rlconform setup skyrl)")
pytest.importorskip("jaxtyping", reason="skyrl-train is not installed (rlconform setup skyrl)")
try:
    from importlib.metadata import version
    version("skyrl-train")
except Exception:                                                    # noqa: BLE001
    pytest.skip("skyrl-train is not installed (rlconform setup skyrl)", allow_module_level=True)

import torch  # noqa: E402

import refimpl  # noqa: E402
from conformance import Unsupported  # noqa: E402
from conformance.adapters import skyrl as sk  # noqa: E402
from tests.adapter_suite import (assert_conforms, assert_every_declaration_occurs,  # noqa: E402
                                 assert_log_ratio_clamp_example, certified)

VARIANTS = list(sk.VARIANTS)
IDS = [v.name for v in VARIANTS]
FILE_LINE = re.compile(r"[\w/]+\.py:\d+")
API_MODE = sk.CONTRACT_AGG


@pytest.fixture(params=VARIANTS, ids=IDS)
def report(request, tmp_path_factory):
    adapter = request.param
    return adapter, certified(adapter, tmp_path_factory)


def test_certifies_without_fail_or_error_or_warning(report):
    assert_conforms(report[1])


def test_every_declared_deviation_occurs(report):
    assert_every_declaration_occurs(*report)


def test_framework_defaults_read_from_skyrl(report):
    adapter, data = report
    d = data["framework_defaults"]
    assert d == adapter.framework_defaults()
    assert {"clip_low", "clip_high", "kl_beta", "kl_estimator", "kl_in", "gae_lambda", "gamma",
            "group_size", "loss_agg", "adv_eps"} <= set(d)
    assert d["loss_agg"] == API_MODE[sk._skyrl().base.trainer.algorithm.loss_reduction]


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
def test_declarations_cite_file_and_line(adapter):
    for what, sentence in {**adapter.shims, **adapter.known_deviations}.items():
        assert FILE_LINE.search(sentence), f"{adapter.name} {what}: no file.py:LINE in {sentence!r}"
        assert "skyrl-train 0.3.1" in sentence, f"{adapter.name} {what}: no pinned version"


def test_plain_variant_is_skyrls_default_reduction():
    assert sk.skyrl._mode() == sk._skyrl().base.trainer.algorithm.loss_reduction == "token_mean"
    # the plain variant's capabilities (and so its declarations) follow the pinned default
    assert sk.DEFAULT_REDUCTION == sk.skyrl._mode()
    assert sk.skyrl.capabilities["agg"] == [API_MODE[sk.skyrl._mode()]]
    with pytest.raises(Unsupported):
        sk.skyrl_sequence_mean.aggregate(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool),
                                         "token-mean")
    with pytest.raises(Unsupported):           # skyrl has no seq-mean-token-sum
        sk.skyrl.aggregate(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool),
                           "seq-mean-token-sum")


# Each variant's own mode against refimpl, with every clip option, values and gradients, norm_len
# included, on padding of 0 and of 1e30; value_loss in the one reduction skyrl's critic has
# (sequence_mean = seq-mean-token-mean).
MASK = torch.arange(6).unsqueeze(0) < torch.tensor([3, 1, 5, 2, 6]).unsqueeze(1)


def _dirty(x, fill):
    return torch.where(MASK, x, torch.full_like(x, fill))


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
@pytest.mark.parametrize("clip_high,dual_clip", [(None, None), (0.28, None), (0.28, 3.0)])
@pytest.mark.parametrize("fill", [0.0, 1e30])
def test_losses_match_refimpl_in_the_variants_own_mode(adapter, clip_high, dual_clip, fill):
    agg = API_MODE[adapter._mode()]
    g = torch.Generator().manual_seed(2)
    old = 0.3 * torch.randn(5, 6, generator=g, dtype=torch.float64) - 1.5
    lp = old + 0.6 * torch.randn(5, 6, generator=g, dtype=torch.float64)
    A = torch.randn(5, 6, generator=g, dtype=torch.float64)
    tol = {"rtol": 1e-6, "atol": 1e-7}        # the ratio is exponentiated in float32 (ppo_utils.py:551, 573)
    for norm_len in (None, 16):
        logp, want_logp = (_dirty(lp, fill).requires_grad_(True), lp.clone().requires_grad_(True))
        got = adapter.ppo_clip_loss(logp, _dirty(old, fill), _dirty(A, fill), MASK, 0.2, clip_high,
                                    dual_clip, agg, norm_len)
        want = refimpl.ppo_clip_loss(want_logp, old, A, MASK, 0.2, clip_high, dual_clip, agg, norm_len)
        torch.testing.assert_close(got, want, **tol)
        (g_got,), (g_want,) = torch.autograd.grad(got, logp), torch.autograd.grad(want, want_logp)
        torch.testing.assert_close(g_got, g_want, **tol)
        torch.testing.assert_close(adapter.aggregate(_dirty(A, fill), MASK, agg, norm_len),
                                   refimpl.aggregate(A, MASK, agg, norm_len))
        for clip in (None, 0.2):
            got = adapter.value_loss(_dirty(lp, fill), _dirty(old, fill), _dirty(A, fill), MASK,
                                     clip, "seq-mean-token-mean", norm_len)
            torch.testing.assert_close(
                got, refimpl.value_loss(lp, old, A, MASK, clip, "seq-mean-token-mean", norm_len))


GROUPS = [torch.tensor([7, 3, 7, 3, 9, 9, 7]), torch.tensor([1, 1, 0, 0, 0, 0, 0]),
          torch.tensor([5, 5, 5, 5, 8, 8, 8])]


@pytest.mark.parametrize("ids", GROUPS)
@pytest.mark.parametrize("scale", ["group", "none"])
def test_grpo_and_rloo_match_refimpl(ids, scale):
    scores = torch.randn(len(ids), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scores = torch.where(ids == 5, torch.full_like(scores, 0.7), scores)
    torch.testing.assert_close(sk.skyrl.group_normalized_advantages(scores, ids, scale),
                               refimpl.group_normalized_advantages(scores, ids, scale))
    torch.testing.assert_close(sk.skyrl.leave_one_out_advantages(scores, ids),
                               refimpl.leave_one_out_advantages(scores, ids))


def test_the_ppo_log_ratio_clamp_example_is_what_skyrl_gives():
    """The example in the ppo_clip_loss/log-ratios-beyond-20 declaration is re-run (one token at
    the stated log-ratio and advantage, the framework's and the contract's loss and gradient)."""
    assert_log_ratio_clamp_example(sk.skyrl.known_deviations["ppo_clip_loss/log-ratios-beyond-20"],
                                   sk.skyrl.ppo_clip_loss)


def test_the_ppo_ratio_is_exponentiated_in_float32():
    """The float32 declaration of the PPO loss: skyrl's float64 loss is exactly the clipped
    surrogate with the ratio exp(logp - old_logp) rounded to float32, and differs from the
    float64 one (refimpl)."""
    g = torch.Generator().manual_seed(5)
    logp = 0.3 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    old, A = torch.zeros_like(logp), torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    got = sk.skyrl.ppo_clip_loss(logp, old, A, mask)
    ratio = logp.to(torch.float32).exp().to(torch.float64)
    assert got == (-torch.min(ratio * A, ratio.clamp(0.8, 1.2) * A)).mean()
    assert got != refimpl.ppo_clip_loss(logp, old, A, mask)


def test_gae_returns_agree_and_advantages_are_whitened():
    """The GAE whitening declaration (exact-advantage and the lam/gamma edge checks): on zero
    padding skyrl's returns are the contract's, and its advantages are the contract's whitened
    by masked_whiten, at lam = 0, lam = 1 and gamma = 0 alike."""
    g = torch.Generator().manual_seed(6)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor([4, 1, 3]).unsqueeze(1)
    r, V = (torch.where(mask, torch.randn(3, 5, generator=g, dtype=torch.float64), 0.0)
            for _ in range(2))
    for gamma, lam in ((0.9, 0.0), (0.9, 1.0), (0.0, 0.95)):
        adv, ret = sk.skyrl.gae(r, V, mask, gamma, lam)
        want_adv, want_ret = refimpl.gae(r, V, mask, gamma, lam)
        torch.testing.assert_close(ret[mask], want_ret[mask])
        whitened = sk._skyrl().pu.masked_whiten(want_adv, mask.to(r.dtype))
        torch.testing.assert_close(adv[mask], whitened[mask])
        assert not torch.allclose(adv[mask], want_adv[mask])


# --- train_step (conformance/adapters/skyrl_train.py) ----------------------------------------------

def _step(adapter, alg, arch="gpt2", temperature=1.0, **overrides):
    """(adapter's loss, recipe's loss, worst relative L2 gradient error, adapter's grads, models)
    of one train_step on the checks' fixture and batch, in the variant's own reduction."""
    from conformance import training as T
    from conformance.checks.training import grad_errors, recipe_step
    fx = T.fixture(arch)
    models = fx.models()
    overrides.setdefault("agg", adapter.capabilities[f"{alg}.agg"][0])
    config = T.config_for(alg, fx, models, temperature=temperature, **overrides)
    batch = T.online_batch(fx, alg, temperature)
    out = adapter.train_step(models["policy"], models["reference"], batch, dict(config))
    loss, grads = recipe_step(fx, batch, config)
    actual = {n: g.to(torch.float64) for n, g in out["grads"].items()}
    return out["loss"], loss, grad_errors(actual, grads)[1], out["grads"], models


def _stated(pattern, sentence):
    from tests.adapter_suite import stated_numbers
    return stated_numbers(pattern, sentence)


@pytest.mark.parametrize("adapter", VARIANTS, ids=IDS)
def test_train_step_grpo_examples_are_what_skyrl_gives(adapter):
    """The stated gpt2 gradient error of grpo (beta 0.04) is measured again, and with beta 0 the
    step agrees with the recipe: the KL loss (no gradient) is the whole difference; the models
    are left as found."""
    (stated,) = _stated(r"gradient off by ([\d.e+-]+) relative L2 on gpt2",
                        adapter.known_deviations["grpo/step-matches-recipe-*"])
    _, _, err, _, models = _step(adapter, "grpo")
    assert f"{err:.2e}" == stated
    assert all(p.grad is None for p in models["policy"].parameters())
    assert not models["policy"].training
    assert _step(adapter, "grpo", beta=0.0)[2] < 1e-4


def test_train_step_kl_loss_has_no_gradient():
    """compute_approx_kl's @torch.no_grad(): the gradient at beta 1 equals the one at beta 0."""
    assert "@torch.no_grad()" in sk.skyrl.known_deviations["grpo/kl-term-exact"]
    g1, g0 = _step(sk.skyrl, "grpo", beta=1.0)[3], _step(sk.skyrl, "grpo", beta=0.0)[3]
    assert all(torch.equal(g1[n], g0[n]) for n in g0)


@pytest.mark.parametrize("adapter,alg", [(v, a) for v in VARIANTS
                                         for a in v.capabilities["algorithms"]],
                         ids=lambda x: getattr(x, "name", x))
def test_train_step_temperature_examples_are_what_skyrl_gives(adapter, alg):
    (stated,) = _stated(r"temperature 0.7, beta 0.1: gradient off by ([\d.e+-]+)",
                        adapter.known_deviations[f"{alg}/temperature"])
    assert f"{_step(adapter, alg, temperature=0.7, beta=0.1)[2]:.2e}" == stated


@pytest.mark.parametrize("alg", sk.skyrl.capabilities["algorithms"])
def test_train_step_grad_accum_examples_are_what_skyrl_gives(alg):
    """token_mean: each micro-batch's token mean / accumulation_steps; the other reductions are
    per-sequence and accumulate exactly."""
    got, want = map(float, _stated(r"grad_accum 2: loss ([\d.e+-]+) instead of ([\d.e+-]+)",
                                   sk.skyrl.known_deviations[f"{alg}/grad-accum"]))
    assert f"{_step(sk.skyrl, alg, grad_accum=2)[0]:.6g}" == f"{got:.6g}"
    assert f"{_step(sk.skyrl, alg)[0]:.6g}" == f"{want:.6g}"
    for adapter in (sk.skyrl_sequence_mean, sk.skyrl_seq_mean_token_sum_norm):
        assert "grpo/grad-accum" not in adapter.known_deviations


@pytest.mark.parametrize("adapter,alg", [(v, a) for v in VARIANTS for a in v.capabilities["algorithms"]
                                         if f"{a}/config-honoured" in v.known_deviations],
                         ids=lambda x: getattr(x, "name", x))
def test_train_step_config_honoured_examples_are_what_skyrl_gives(adapter, alg):
    """The first option sample the config-honoured check fails on (the KL loss without gradient),
    on Llama as the check runs it."""
    option, value, beta, stated = _stated(
        r"(\w+) = ([\w.]+)(?:, beta ([\d.]+))? \(on Llama\): gradient off by ([\d.e+-]+)",
        adapter.known_deviations[f"{alg}/config-honoured"])
    moved = {option: value if option == "kl_kind" else float(value)}
    if beta:
        moved["beta"] = float(beta)
    assert f"{_step(adapter, alg, arch='llama', **moved)[2]:.2e}" == stated
