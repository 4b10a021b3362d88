"""The bundled verl adapters (conformance/adapters/verl.py) certify cleanly: no fail, no error,
every declared deviation still occurs, every declaration cites verl's file and line.

Skipped unless verl is installed (its own environment: pip install torch==2.13.0, then
`rlconform setup verl`, i.e. conformance/adapters/verl_install.sh: verl 0.9.1 without its
dependencies, plus the few that its core_algos needs)."""

import math
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


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.0), (0.99, 1.0), (0.0, 0.95)])
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


def test_the_large_log_ratio_example_is_what_verl_gives():
    """The example in the kl_estimate/large-log-ratios declaration is re-run: at the stated
    log-ratio verl's low_var_kl gives the stated clamped value, where the contract's k3 (refimpl)
    gives the stated one (to the two decimals the sentence gives)."""
    sentence = vl.verl.known_deviations["kl_estimate/large-log-ratios"]
    found = re.search(r"at l = (-?[\d.]+) it gives (-?[\d.]+) where [^=]+= (-?[\d.]+)", sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    l, got_stated, want_stated = found.groups()
    logp = torch.tensor([[float(l)]], dtype=torch.float64)
    ref = torch.zeros_like(logp)
    got = float(vl.verl.kl_estimate(logp, ref, kind="k3"))
    want = float(refimpl.kl_estimate(logp, ref, None, "k3"))
    assert got == float(got_stated), (got, sentence)
    assert round(want, 2) == float(want_stated), (want, sentence)


def test_the_ratio_clamp_example_is_what_verl_gives():
    """The example in the ppo_clip_loss/log-ratios-beyond-20 declaration is re-run: one token at
    the stated log-ratio and advantage, dual clip off; verl's loss and gradient and the contract's
    (refimpl) are the stated ones, to the three digits the sentence gives."""
    sentence = vl.verl.known_deviations["ppo_clip_loss/log-ratios-beyond-20"]
    number = r"(-?[\d.]+(?:e[+-]\d+)?)"
    found = re.search(rf"at logp - old_logp = {number}, A = {number} the loss is {number} with "
                      rf"gradient {number} where the contract's is {number} with gradient {number}",
                      sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    l, A, *stated = (float(x) for x in found.groups())
    old = torch.tensor([[-30.0]], dtype=torch.float64)
    adv, mask = torch.tensor([A], dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool)
    results = []
    for loss_fn in (vl.verl.ppo_clip_loss, refimpl.ppo_clip_loss):
        logp = (old + l).requires_grad_(True)
        loss = loss_fn(logp, old, adv, mask, 0.2, None, None)
        (grad,) = torch.autograd.grad(loss, logp)
        results += [float(loss.detach()), float(grad)]
    assert [float(f"{x:.3g}") for x in results] == stated, (results, sentence)


def test_the_whitening_divisor_example_is_what_verl_gives():
    """The example in the batch_normalized_advantages/exact-bias-shrinks-with-batch-size
    declaration is re-run: masked_whiten of the stated equal advantages gives the stated value for
    each (the contract: 0, variance 0); and the sentence is the divisor's (torch_functional.py:308)."""
    sentence = vl.verl.known_deviations["batch_normalized_advantages/exact-bias-shrinks-with-batch-size"]
    found = re.search(r"at advantages \(([^)]*)\) it gives ([\d.e+-]+) for both", sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    x = torch.tensor([float(v) for v in found.group(1).split(",")], dtype=torch.float64)
    got = vl.verl.batch_normalized_advantages(x)
    assert [f"{v:.3g}" for v in got.tolist()] == [found.group(2)] * len(x), (got, sentence)
    assert refimpl.batch_normalized_advantages(x).abs().max() == 0
    assert "mask.sum() + 1e-8" in sentence and "torch_functional.py:308" in sentence


def test_one_cause_one_sentence():
    """Checks failing for one cause share one declared sentence (reports group by sentence)."""
    d = vl.verl.known_deviations
    gae = {d[k] for k in ("gae/matches-reference", "gae/exact-advantage-with-true-values",
                          "gae/lam-zero-gives-td-error", "gae/lam-one-gives-return-minus-value",
                          "gae/gamma-zero-gives-reward-minus-value")}
    assert len(gae) == 1 and "masked_whiten" in gae.pop()
    assert d["kl_estimate/large-log-ratios"] is d["kl_estimate/log-ratios-beyond-20"]
    assert vl.verl.upstream["kl_estimate/large-log-ratios"] == vl.verl.upstream[
        "kl_estimate/log-ratios-beyond-20"]


# --- train_step: verl's PPO trainer path (conformance/adapters/verl_train.py) ---------------------
# Needs verl's worker dependencies beyond the minimal install (peft, torchdata, datasets, uvicorn,
# fastapi, cachetools); skipped without them.

def _train_deps():
    try:
        vl_train = __import__("conformance.adapters.verl_train", fromlist=["_verl"])
        return vl_train._verl()
    except Unsupported as exc:
        pytest.skip(str(exc))


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _recipe_and_verl(adapter, alg, arch="gpt2", **overrides):
    from conformance.training import config_for, fixture, online_batch, trainable
    from refimpl import recipes
    fx = fixture(arch)
    models = fx.models()
    config = config_for(alg, fx, models, **overrides)
    batch = online_batch(fx, alg, config["temperature"])
    before = {n: p.detach().clone() for n, p in trainable(alg, models, config).items()}
    got = adapter.train_step(models["policy"], models["reference"], batch, dict(config))
    named = trainable(alg, models, config)
    assert all(p.grad is None for p in named.values()), "train_step left .grad behind"
    assert all(torch.equal(before[n], p.detach()) for n, p in named.items()), "weights changed"
    fresh = fx.models()
    want_config = dict(config, value_model=fresh["value"]) if alg == "ppo" else config
    step = recipes.RECIPES[alg](fresh["policy"], fresh["reference"], batch, want_config)
    step.loss.backward()
    want = {n: p.grad for n, p in trainable(alg, fresh, want_config).items()}
    return got, float(step.loss.detach()), want


@pytest.mark.parametrize("adapter,arch,agg,grad_accum,temperature", [
    (vl.verl, "gpt2", "token-mean", 4, 0.7),                      # rmpad (verl's default)
    (vl.verl_no_rmpad, "gpt2", "token-mean", 2, 1.0),
    (vl.verl_seq_mean_token_sum_norm, "llama", "seq-mean-token-sum-norm", 2, 1.0),
])
def test_train_step_is_the_recipe_for_grpo(adapter, arch, agg, grad_accum, temperature):
    """verl's step (ref log-probs, advantages, micro-batched update with its global-token
    scaling) equals refimpl's GRPO recipe, loss and every gradient, with unequal real-token
    counts per micro-batch, the KL in the loss (k3) and a temperature."""
    _train_deps()
    got, want_loss, want = _recipe_and_verl(adapter, "grpo", arch, agg=agg, grad_accum=grad_accum,
                                            temperature=temperature)
    assert abs(got["loss"] - want_loss) <= 1e-5 * abs(want_loss)
    assert set(got["grads"]) == set(want)
    assert max(_rel(got["grads"][n], want[n]) for n in want) < 1e-5


def test_train_step_sees_a_wrong_kl_coefficient():
    """The comparison above can fail: verl run with another beta than the recipe's differs."""
    _train_deps()
    from conformance.training import config_for, fixture, online_batch
    from refimpl import recipes
    fx = fixture("gpt2")
    models = fx.models()
    config = config_for("grpo", fx, models, agg="token-mean")
    batch = online_batch(fx, "grpo")
    got = vl.verl.train_step(models["policy"], models["reference"], batch,
                             dict(config, beta=config["beta"] * 1.01))
    step = recipes.RECIPES["grpo"](models["policy"], models["reference"], batch, config)
    step.loss.backward()
    worst = max(_rel(got["grads"][n], p.grad) for n, p in models["policy"].named_parameters())
    assert worst > 1e-4


def test_train_step_kl_in_reward_turns_nan_padding_into_nan():
    """The declared */nan-old-logp-ignored deviation: apply_kl_penalty multiplies by the response
    mask (ray_trainer.py:103), so NaN padding in old_log_probs reaches the rewards."""
    _train_deps()
    from conformance.training import config_for, fixture, online_batch
    fx = fixture("gpt2")
    models = fx.models()
    config = config_for("rloo", fx, models, agg="token-mean")
    batch = online_batch(fx, "rloo")
    batch["old_logp"] = batch["old_logp"].masked_fill(~batch["completion_mask"].bool(), math.nan)
    got = vl.verl.train_step(models["policy"], models["reference"], batch, config)
    assert math.isnan(got["loss"])
    assert "ray_trainer.py:100-103" in vl.verl.known_deviations["rloo/nan-old-logp-ignored"]


def test_ppo_critic_gradient_is_the_value_loss_alone():
    """The declared ppo deviation, re-run: verl's policy gradients are the recipe's; its value
    gradients are the recipe's divided by vf_coef (0.5: relative L2 1.00, cosine 1), since the
    critic steps on value_loss alone (ray_trainer.py:1378)."""
    _train_deps()
    sentence = vl.verl.known_deviations["ppo/step-matches-recipe-*"]
    assert "at vf_coef 0.5: relative L2 1.00, cosine 1.000000" in sentence
    got, _, want = _recipe_and_verl(vl.verl, "ppo", "gpt2", agg="token-mean")
    value = [n for n in want if n.startswith("value_model.")]
    policy = [n for n in want if not n.startswith("value_model.")]
    assert value and policy
    assert max(_rel(got["grads"][n], want[n]) for n in policy) < 1e-5
    assert max(_rel(got["grads"][n], 2 * want[n]) for n in value) < 1e-5
    rel = _rel(torch.cat([got["grads"][n].flatten() for n in value]),
               torch.cat([want[n].flatten() for n in value]))
    assert f"{rel:.2f}" == "1.00"
