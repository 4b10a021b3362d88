"""OpenRLHF 0.11.2 adapters (conformance/adapters/openrlhf.py): every variant certifies with no
fail and no error, every declared deviation occurs, and every declaration cites file:line.

Skipped unless OpenRLHF is installed (bash conformance/adapters/openrlhf_install.sh); its package
``__init__`` is empty, so the import below pulls in none of its heavy dependencies.
"""

import fnmatch
import re
import sys

import pytest

pytest.importorskip("openrlhf", reason="OpenRLHF is not installed "
                    "(bash conformance/adapters/openrlhf_install.sh)")

from conformance.adapters import openrlhf as adapters  # noqa: E402
from tests.adapter_suite import (assert_log_ratio_clamp_example,  # noqa: E402
                                 stated_numbers)
from conformance.runner import certify  # noqa: E402

CITATION = re.compile(r"[\w./-]+\.py:\d+")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("openrlhf-reports")
    return {a.name: certify(a, str(out), isolate=False) for a in adapters.VARIANTS}


@pytest.mark.parametrize("adapter", adapters.VARIANTS, ids=lambda a: a.name)
def test_variant_certifies_without_fail_or_error(adapter, reports):
    data = reports[adapter.name]
    bad = [f"{r['status']} {r['id']}: {r['message']}" for r in data["checks"]
           if r["status"] in ("fail", "error")]
    assert not bad, "\n".join(bad)
    assert data["warnings"] == []


@pytest.mark.parametrize("adapter", adapters.VARIANTS, ids=lambda a: a.name)
def test_every_declared_deviation_occurs(adapter, reports):
    rows = reports[adapter.name]["checks"]
    stale = [pattern for pattern in adapter.known_deviations
             if not any(fnmatch.fnmatchcase(r["id"], pattern) and r["status"] == "xfail" for r in rows)]
    assert not stale, f"declared but never xfail: {stale}"


@pytest.mark.parametrize("adapter", adapters.VARIANTS, ids=lambda a: a.name)
def test_every_shim_and_deviation_cites_file_and_line(adapter):
    sentences = {**adapter.shims, **adapter.known_deviations}
    missing = [key for key, text in sentences.items()
               if not CITATION.search(text) or "openrlhf 0.11.2" not in text]
    assert not missing


@pytest.mark.parametrize("adapter", adapters.VARIANTS, ids=lambda a: a.name)
def test_framework_defaults_are_read_from_openrlhf(adapter):
    defaults = adapter.framework_defaults()
    assert defaults["clip_low"] == defaults["clip_high"] == 0.2
    assert defaults["kl_estimator"] == "k1" and defaults["kl_in"] == "reward"
    assert defaults["loss_agg"] in ("token-mean", "seq-mean-token-mean")


def test_stand_ins_do_not_outlive_loading():
    adapters._fw()
    for name in ("deepspeed", "ray", "openrlhf.models.utils", "openrlhf.trainer.ray.launcher"):
        module = sys.modules.get(name)
        assert module is None or getattr(module, "__file__", None), name


def test_the_large_log_ratio_example_is_what_openrlhf_gives():
    """The example in the kl_estimate/large-log-ratios declaration is re-run: at the stated
    log-ratio the stated estimator gives, through compute_approx_kl, the stated clamped value,
    where the contract (refimpl) gives the stated one."""
    import torch

    import refimpl
    sentence = adapters.openrlhf.known_deviations["kl_estimate/large-log-ratios"]
    found = re.search(r"at l = (-?[\d.]+), (k\d) gives (-?[\d.]+) instead of (-?[\d.]+)", sentence)
    assert found, f"the declaration no longer states its example: {sentence!r}"
    l, kind, got_stated, want_stated = found.groups()
    logp = torch.tensor([[float(l)]], dtype=torch.float64)
    ref = torch.zeros_like(logp)
    got = float(adapters.openrlhf.kl_estimate(logp, ref, kind=kind))
    want = float(refimpl.kl_estimate(logp, ref, None, kind))
    assert got == float(got_stated), (got, sentence)
    assert want == float(want_stated), (want, sentence)


def test_outputs_come_back_uncast():
    """compute_approx_kl works in float32: the adapter returns its float32 output as it is, for
    float64 input (docs/contract.md: outputs are not cast back to the input's dtype)."""
    import torch
    logp = torch.tensor([[0.5, -0.25]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert adapters.openrlhf.kl_estimate(logp, torch.zeros_like(logp)).dtype == torch.float32
    out = adapters.openrlhf.kl_penalized_rewards(torch.ones(1, dtype=torch.float64), logp,
                                                 torch.zeros_like(logp), mask, 0.1)
    assert out.dtype == torch.float32


def test_the_ppo_log_ratio_clamp_example_is_what_openrlhf_gives():
    """The example in the ppo_clip_loss/log-ratios-beyond-20 declaration is re-run (one token at
    the stated log-ratio and advantage, the framework's and the contract's loss and gradient)."""
    assert_log_ratio_clamp_example(adapters.openrlhf.known_deviations["ppo_clip_loss/log-ratios-beyond-20"],
                                   adapters.openrlhf.ppo_clip_loss)


def test_the_group_norm_all_equal_example_is_what_openrlhf_gives():
    """The example in the group_norm eps declaration is re-run: a group of n equal float32
    rewards v (beside a group of other rewards) gets, through compute_advantages_and_returns,
    the stated advantage on every member (to the 6 digits the sentence gives)."""
    import torch
    sentence = adapters.openrlhf_group_norm.known_deviations[
        "group_normalized_advantages/all-equal-group-gives-zero"]
    n, v, stated = stated_numbers(r"(\d+) float32 rewards of ([\d.]+) get (-?[\d.]+) each instead of 0",
                           sentence)
    n = int(n)
    scores = torch.tensor([float(v)] * n + [0.1 * i for i in range(n)], dtype=torch.float32)
    out = adapters.openrlhf_group_norm.group_normalized_advantages(
        scores, torch.tensor([1] * n + [2] * n))
    assert [float(f"{x:.6g}") for x in out[:n].tolist()] == [float(stated)] * n, (out, sentence)


def test_the_logexp_overflow_example_is_what_openrlhf_gives():
    """The example in openrlhf-logexp's large-gap declaration is re-run: at the stated gap in
    float32 LogExpLoss gives an infinite loss and a NaN gradient; softplus gives the stated
    finite loss and gradient."""
    import torch
    sentence = adapters.openrlhf_logexp.known_deviations["bradley_terry_loss/large-gap-float32"]
    gap, soft_loss, soft_grad = map(float, stated_numbers(
        r"at r_r - r_c = ([\d.]+) in float32 the loss is inf and its gradient NaN, where softplus "
        r"gives ([\d.]+) and (-?[\d.]+)", sentence))
    chosen = torch.zeros(1, dtype=torch.float32, requires_grad=True)
    rejected = torch.full((1,), gap, dtype=torch.float32)
    loss = adapters._fw().loss.LogExpLoss()(chosen, rejected)
    (grad,) = torch.autograd.grad(loss, chosen)
    assert loss.isinf() and grad.isnan(), (loss, grad)
    chosen = torch.zeros(1, dtype=torch.float32, requires_grad=True)
    soft = torch.nn.functional.softplus(rejected - chosen).mean()
    (grad,) = torch.autograd.grad(soft, chosen)
    assert (soft.item(), grad.item()) == (soft_loss, soft_grad)


def test_a_negative_kl_coefficient_is_run_as_zero():
    """The kl_penalized_rewards/rejects-negative-beta declaration: compute_reward turns a
    negative kl_coef into 0, so the rewards are those of beta = 0 (no KL penalty)."""
    import torch
    logp = torch.tensor([[0.5, -0.25, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    scores = torch.ones(1, dtype=torch.float64)
    rewards = {beta: adapters.openrlhf.kl_penalized_rewards(scores, logp, torch.zeros_like(logp),
                                                            mask, beta) for beta in (-0.1, 0.0, 0.1)}
    assert torch.equal(rewards[-0.1], rewards[0.0])
    assert not torch.equal(rewards[0.1], rewards[0.0])


def test_the_advantage_clip_example_is_what_openrlhf_gives():
    """The example in the advantage-clip declaration is re-run: the stated scores of one group
    (beside a second group) through the rloo path, OpenRLHF's advantage of the stated score and
    the contract's."""
    import torch

    import refimpl
    sentence = adapters.openrlhf_rloo.known_deviations["leave_one_out_advantages/scores-of-any-size"]
    scores, which, said, want = stated_numbers(
        r"with the scores \(([-\d., ]+)\) of one group the rloo advantage of (-?[\d.]+) is "
        r"(-?[\d.]+) instead of (-?[\d.]+)", sentence)
    group = [float(x) for x in scores.split(",")]
    s = torch.tensor(group + [1.0, 2.0, 3.0], dtype=torch.float64)
    ids = torch.tensor([0] * len(group) + [1] * 3)
    i = group.index(float(which))
    assert float(adapters.openrlhf_rloo.leave_one_out_advantages(s, ids)[i]) == float(said)
    assert float(refimpl.leave_one_out_advantages(s, ids)[i]) == float(want)


# --- train_step (conformance/adapters/openrlhf_train.py) -------------------------------------------

def _step_against_recipe(adapter, alg, arch, **overrides):
    """(adapter's loss, recipe's loss, worst relative L2 gradient error, adapter's grads)."""
    from conformance import training as T
    from conformance.checks.training import grad_errors, recipe_step
    fx = T.fixture(arch)
    models = fx.models()
    config = T.config_for(alg, fx, models, **overrides)
    batch = (T.preference_batch(fx) if alg in ("dpo", "ipo")
             else T.online_batch(fx, alg, config["temperature"]))
    out = adapter.train_step(models["policy"], models["reference"], batch, dict(config))
    loss, grads = recipe_step(fx, batch, config)
    actual = {n: g.to(torch.float64) for n, g in out["grads"].items()}
    return out["loss"], loss, grad_errors(actual, grads)[1], models, config


import torch  # noqa: E402


def test_train_step_grpo_token_mean_matches_the_recipe_under_grad_accum():
    """The real ActorPPOTrainer.training_step path, with DeepSpeed's 1/gas and the global
    token normalisers, gives the recipe's loss and gradients; the models are left as found."""
    la, le, err, models, _ = _step_against_recipe(adapters.openrlhf_group_norm, "grpo", "gpt2",
                                                  agg="token-mean", grad_accum=4)
    assert abs(la - le) <= 1e-5 * abs(le) and err < 1e-4
    assert all(p.grad is None for p in models["policy"].parameters())
    assert not models["policy"].training


def test_train_step_runs_openrlhfs_trainer_files():
    import inspect
    from conformance.adapters import openrlhf_train
    tfw = openrlhf_train._tfw()
    root = str(tfw.fw.root)
    for fn in (tfw.Actor.forward, tfw.ActorPPOTrainer.training_step, tfw.CriticPPOTrainer.training_step,
               tfw.DPOTrainer.concatenated_forward, tfw.RemoteExperienceMaker.make_experience,
               tfw.CriticModel.forward):
        assert inspect.unwrap(fn).__code__.co_filename.startswith(root), fn
    assert "deepspeed" not in sys.modules and "ray" not in sys.modules


def test_the_kl_token_mean_example_is_what_openrlhf_gives():
    (stated,) = stated_numbers(r"gpt2: gradient off by ([\d.e+-]+) relative L2",
                               adapters.TRAIN_KL_TOKEN_MEAN)
    la, le, err, _, _ = _step_against_recipe(adapters.openrlhf_group_norm, "grpo", "gpt2")
    assert f"{err:.1e}" == stated
    # the same step with beta 0 (no KL term) agrees: the KL's aggregation is the whole difference
    assert _step_against_recipe(adapters.openrlhf_group_norm, "grpo", "gpt2", beta=0.0)[2] < 1e-4


def test_the_kl_in_reward_example_is_what_openrlhf_gives():
    (stated,) = stated_numbers(r"gpt2: gradient off by ([\d.e+-]+) relative L2",
                               adapters.TRAIN_KL_IN_REWARD_GROUP)
    err = _step_against_recipe(adapters.openrlhf_group_norm, "grpo", "gpt2", kl_in="reward",
                               kl_kind="k1", beta=0.1)[2]
    assert f"{err:.1e}" == stated


def test_the_biased_whitening_example_is_what_openrlhf_gives():
    pct, n = stated_numbers(r"([\d.]+)% larger with the (\d+) real tokens", adapters.TRAIN_BIASED_WHITENING)
    la, le, err, _, _ = _step_against_recipe(adapters.openrlhf_reinforce, "reinforce_pp", "gpt2")
    ratio = (int(n) / (int(n) - 1)) ** 0.5
    assert f"{100 * (ratio - 1):.2f}" == pct and abs(la / le - ratio) < 1e-4 and abs(err - (ratio - 1)) < 1e-4


def test_the_critic_gets_no_vf_coef():
    """With vf_coef 1 OpenRLHF's critic gradient is the recipe's; at 0.5 it is twice it."""
    assert "twice at vf_coef 0.5" in adapters.TRAIN_NO_VF_COEF
    from conformance.checks.training import grad_errors, recipe_step
    from conformance import training as T
    fx = T.fixture("llama")
    for vf_coef, expected in ((1.0, 0.0), (0.5, 1.0)):
        models = fx.models()
        config = T.config_for("ppo", fx, models, vf_coef=vf_coef)
        batch = T.online_batch(fx, "ppo")
        out = adapters.openrlhf.train_step(models["policy"], models["reference"], batch, dict(config))
        _, grads = recipe_step(fx, batch, config)
        value = {n: g.to(torch.float64) for n, g in out["grads"].items() if n.startswith("value_model.")}
        err = grad_errors(value, {n: grads[n] for n in value})[1]
        assert abs(err - expected) < 1e-4, (vf_coef, err)


def test_dpo_and_ipo_steps_match_the_recipe():
    for alg in ("dpo", "ipo"):
        la, le, err, _, _ = _step_against_recipe(adapters.openrlhf, alg, "llama", grad_accum=2)
        assert abs(la - le) <= 1e-5 * abs(le) and err < 1e-4


def test_a_variant_refuses_the_algorithms_it_does_not_embody():
    from conformance import Unsupported, training as T
    fx = T.fixture("llama")
    models = fx.models()
    with pytest.raises(Unsupported):
        adapters.openrlhf_rloo.train_step(models["policy"], models["reference"], T.online_batch(fx),
                                          T.config_for("grpo", fx, models))
    with pytest.raises(Unsupported):
        adapters.openrlhf_group_norm.train_step(models["policy"], models["reference"], T.online_batch(fx),
                                                T.config_for("grpo", fx, models, norm_len=8.0))
