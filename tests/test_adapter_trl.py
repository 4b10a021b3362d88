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
from tests.adapter_suite import (assert_conforms, assert_delta_example,  # noqa: E402
                                 assert_every_declaration_occurs, stated_numbers,
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
    constant), to float32 precision (TRL's reward tensor is float32), and they come back as TRL
    produces them: float32 for float64 scores (outputs are not cast back)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(12, generator=g, dtype=torch.float64)
    ids = torch.tensor([5, 2, 9, 5, 2, 9, 5, 2, 9, 5, 2, 9])
    for scale in ("group", "batch", "none"):
        got = tr.trl.group_normalized_advantages(scores, ids, scale)
        assert got.dtype == torch.float32
        want = refimpl.group_normalized_advantages(scores, ids, scale, 1e-4)
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=2e-5)


def test_the_all_equal_group_example_is_what_trl_gives():
    """The example in the exact-std-normalisation-bias declaration is re-run: an all-equal group
    of G float64 rewards r gets, from TRL's code path, the advantage the sentence states (to the
    three significant digits it gives)."""
    sentence = tr.GRPO_DEVIATIONS["group_normalized_advantages/exact-std-normalisation-bias"]
    G, r, stated = stated_numbers(r"all-equal group of (\d+) rewards of ([\d.]+) gets advantages of "
                           r"([\d.]+e-\d+) instead of 0", sentence)
    scores = torch.full((int(G),), float(r), dtype=torch.float64)
    got = tr.trl_grpo.group_normalized_advantages(scores, torch.zeros(int(G), dtype=torch.long))
    assert float(f"{float(got.abs().max()):.3g}") == float(stated), (got, sentence)
    assert bool((got == got[0]).all())                 # every member gets the same advantage


def test_the_delta_example_is_what_trl_gives():
    """The example in the dual-clip-inside-clip-range declaration is re-run: TRL's delta, the
    contract's dual_clip, on one token with A = +1 and one with A = -1."""
    assert_delta_example(tr.GRPO_DEVIATIONS["ppo_clip_loss/dual-clip-inside-clip-range"],
                         tr.trl_grpo.ppo_clip_loss)


def test_the_margin_example_is_what_trl_gives():
    """The example in the reward margin declaration is re-run: with float64 rewards TRL
    subtracts a margin of 0.7 as the float32 value the sentence states."""
    sentence = tr.REWARD_DEVIATIONS["bradley_terry_loss/gradient-is-sigmoid-minus-one"]
    margin, stated = map(float, stated_numbers(r"a margin of ([\d.]+) is subtracted as ([\d.]+) \(float32",
                                        sentence))
    zero = torch.zeros(1, dtype=torch.float64)
    got = tr.trl_reward.bradley_terry_loss(zero, zero, margin)
    assert got.dtype == torch.float64
    used = float(torch.tensor(margin, dtype=torch.float32))
    assert float(f"{used:.9f}") == stated
    assert float(got[0]) == float(torch.nn.functional.softplus(torch.tensor(used, dtype=torch.float64)))
    assert float(got[0]) != float(torch.nn.functional.softplus(torch.tensor(margin, dtype=torch.float64)))


@pytest.mark.parametrize("adapter", [tr.trl_grpo, tr.trl_rloo], ids=["grpo", "rloo"])
def test_advantages_are_float32_for_float64_scores(adapter):
    """The dtype-kept declarations: both trainers' advantages come back float32 for float64
    scores, as their float32 reward tensor makes them."""
    scores = torch.tensor([0.1, 0.7, 0.3, 0.9], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1, 1])
    fn = getattr(adapter, "group_normalized_advantages", None) or adapter.leave_one_out_advantages
    assert fn(scores, ids).dtype == torch.float32


# --- train_step: the trainers' real step (conformance/adapters/trl_train.py) ----------------------

def _step_case(adapter, alg, arch="llama", equal_prompts=False, **overrides):
    """(adapter's loss and grads, recipe's loss and grads) on the training fixtures."""
    from conformance import training as T
    from refimpl import recipes
    fx = T.fixture(arch)
    models = fx.models()
    config = T.config_for(alg, fx, models, **overrides)
    batch = (T.online_batch(fx, alg, config["temperature"]) if alg in recipes.ONLINE
             else T.preference_batch(fx))
    if equal_prompts:                     # every prompt as long as the longest: no left padding
        batch["prompt_ids"] = torch.where(batch["prompt_mask"].bool(), batch["prompt_ids"],
                                          torch.full_like(batch["prompt_ids"], 5))
        batch["prompt_mask"] = torch.ones_like(batch["prompt_mask"])
        batch = {**batch, **({} if alg not in recipes.ONLINE else {
            "old_logp": T.online_batch(fx, alg, config["temperature"])["old_logp"]})}
    model = models["reward"] if alg == "reward_model" else models["policy"]
    got = adapter.train_step(model, models["reference"], batch, dict(config))
    assert all(p.grad is None for p in model.parameters())        # .grad left as found
    fresh = fx.models()
    model = fresh["reward"] if alg == "reward_model" else fresh["policy"]
    step = recipes.RECIPES[alg](model, fresh["reference"], batch, config)
    step.loss.backward()
    want = {n: p.grad for n, p in model.named_parameters()}
    num = sum(float((got["grads"][n] - g).pow(2).sum()) for n, g in want.items())
    den = sum(float(g.pow(2).sum()) for g in want.values())
    return abs(got["loss"] - float(step.loss)) / abs(float(step.loss)), (num / den) ** 0.5


def test_grpo_step_is_the_recipe_where_trl_has_the_recipes_options():
    """TRL's real GRPO step (advantages, clipped objective with the rollout's old_logp, the
    loss_type normalisation, the fused LM head at the temperature) equals the recipe on Llama when
    the options TRL lacks cannot show: beta 0 (no importance-weighted KL) and scale 'none' (no
    1e-4 eps)."""
    for temperature in (1.0, 0.7):
        loss_err, grad_err = _step_case(tr.trl_grpo, "grpo", beta=0.0, scale="none",
                                        temperature=temperature)
        assert loss_err < 1e-5 and grad_err < 1e-5, (temperature, loss_err, grad_err)
    # the declared deviations of the default options show
    assert _step_case(tr.trl_grpo, "grpo")[1] > 1e-4                 # KL bias correction, eps


def test_gpt2_step_fails_only_through_left_padding():
    """The declared cause of the GPT-2 step deviation: TRL passes no position_ids. Without left
    padding the GPT-2 step is the recipe's; with it, it is far off."""
    assert _step_case(tr.trl_dr_grpo, "dr_grpo", "gpt2", beta=0.0)[1] > 0.1
    loss_err, grad_err = _step_case(tr.trl_dr_grpo, "dr_grpo", "gpt2", equal_prompts=True, beta=0.0)
    assert loss_err < 1e-5 and grad_err < 1e-5


def test_ipo_step_is_length_normalised_and_dpo_is_not():
    """DPOTrainer's sigmoid loss is the recipe's DPO; its IPO divides by completion lengths
    (the ipo/step-matches-recipe-* declaration), seen on multi-token completions."""
    assert max(_step_case(tr.trl_dpo, "dpo")) < 1e-5
    assert _step_case(tr.trl_dpo, "ipo")[1] > 0.1
    assert "ipo/step-matches-recipe-*" in tr.trl_dpo.known_deviations


def test_rloo_step_clips_the_sequence_ratio():
    """RLOO on policy (old_logp = the policy's own) has the recipe's gradient (the k1 KL in the
    reward included); off policy it clips the sequence-level ratio (declared)."""
    from conformance import training as T
    from refimpl import recipes
    fx = T.fixture("llama")
    models = fx.models()
    config = T.config_for("rloo", fx, models, beta=0.05)
    batch = T.online_batch(fx, "rloo")
    with torch.no_grad():
        logp = recipes.completion_logprobs(models["policy"], batch["prompt_ids"], batch["prompt_mask"],
                                           batch["completion_ids"], batch["completion_mask"])
    batch["old_logp"] = torch.where(batch["completion_mask"].bool(), logp, torch.zeros_like(logp))
    got = tr.trl_rloo.train_step(models["policy"], models["reference"], batch, config)
    step = recipes.rloo(models["policy"], models["reference"], batch, config)
    step.loss.backward()
    want = {n: p.grad for n, p in models["policy"].named_parameters()}
    num = sum(float((got["grads"][n] - g).pow(2).sum()) for n, g in want.items())
    den = sum(float(g.pow(2).sum()) for g in want.values())
    assert (num / den) ** 0.5 < 1e-5
    assert _step_case(tr.trl_rloo, "rloo")[1] > 0.1


def test_train_step_capabilities_and_unsupported():
    assert tr.trl_grpo.capabilities["algorithms"] == ["grpo"]
    assert tr.trl_dr_grpo.capabilities["algorithms"] == ["dr_grpo"]
    assert tr.trl_bnpo.capabilities["algorithms"] == ["dapo"]
    assert set(tr.trl.capabilities["algorithms"]) == {"dapo", "rloo", "dpo", "ipo", "reward_model"}
    from conformance import training as T
    fx = T.fixture("llama")
    models = fx.models()
    with pytest.raises(Unsupported):           # GRPO puts the KL in the loss only
        tr.trl_grpo.train_step(models["policy"], models["reference"], T.online_batch(fx),
                               T.config_for("grpo", fx, models, kl_in="reward"))
    with pytest.raises(Unsupported):
        tr.trl_grpo.train_step(models["policy"], models["reference"], T.online_batch(fx),
                               T.config_for("dapo", fx, models))


# --- train_run: a short real run through Trainer.train() --------------------------------------------

def _tiny_run(adapter, alg, tmp_path, monkeypatch, steps=2):
    """``steps`` sampled batches of 4 prompts x 4 completions on a random tiny Llama; returns the
    rows, the task reward's values per call, and whether the checkpoint was left untouched."""
    import hashlib

    from conformance.adapters import trl_train as tt
    from refimpl import models, recipes
    from refimpl.tasks import make_task
    tok = models.build_tokenizer()
    path = models.save(models.causal_lm(tok, "llama", seed=0), tok, tmp_path / "policy")
    digest = lambda: hashlib.sha1((path / "model.safetensors").read_bytes()).hexdigest()
    before = digest()
    task = make_task("reverse", seed=0, n_train=32, n_eval=4)
    # prompts per batch, group size, epochs, lr, clip norm: a small batch, refimpl's other settings
    monkeypatch.setattr(tt, "_loop_settings", lambda a: (4, 4, 1 if a == "rloo" else 2, 1e-4, 1.0))
    seen = []
    real = type(task).reward

    def counted(self, prompt, completion):
        value = real(self, prompt, completion)
        seen.append((prompt, completion, value))
        return value
    monkeypatch.setattr(type(task), "reward", counted)
    config = recipes.default_config(alg, model_path=str(path), ref_model_path=str(path))
    threads = torch.get_num_threads()
    rows = adapter.train_run(str(path), task, config, steps, 0, str(tmp_path / "out"))
    assert torch.get_num_threads() == threads              # restored
    return rows, seen, digest() == before


@pytest.mark.parametrize("adapter, alg", [(tr.trl_grpo, "grpo"), (tr.trl_dapo, "dapo"),
                                          (tr.trl_rloo, "rloo")],
                         ids=["trl-grpo", "trl-dapo-beta0", "trl-rloo"])
def test_train_run_returns_one_row_per_sampled_batch(adapter, alg, tmp_path, monkeypatch):
    import math
    rows, seen, untouched = _tiny_run(adapter, alg, tmp_path, monkeypatch)
    epochs = 1 if alg == "rloo" else 2
    assert len(rows) == 2 and untouched
    assert [r["trl_global_steps"] for r in rows] == [
        list(range(1 + i * epochs, 1 + (i + 1) * epochs)) for i in range(2)]
    assert len(seen) == 2 * 16                             # task.reward once per completion
    for i, row in enumerate(rows):
        assert math.isfinite(row["reward"]) and math.isfinite(row["kl"])
        values = [v for _, _, v in seen[i * 16:(i + 1) * 16]]
        assert row["reward"] == pytest.approx(sum(values) / 16, abs=1e-6)   # TRL's float32 mean
    # completions are scored as text without <eos>, the prompts as given
    assert all("<eos>" not in c and p.endswith(">") for p, c, _ in seen)
    if alg == "dapo":
        # beta 0: TRL logs no KL; the adapter's probe reads 0 at the first batch (policy = start)
        assert rows[0]["kl_source"].startswith("adapter probe")
        assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    else:
        assert "kl_source" not in rows[0]


def test_train_run_decodes_like_refimpl():
    from conformance.adapters import trl_train as tt
    from refimpl import models
    tok = models.build_tokenizer()
    ids = tok.convert_tokens_to_ids(list("1284"))
    assert tt._decode_completion(tok, ids + [tok.eos_token_id]) == "1284"
    assert tt._decode_completion(tok, ids) == "1284"                     # truncated, no eos
    assert tt._decode_completion(tok, ids[:2] + [tok.pad_token_id, tok.eos_token_id]) == "12<pad>"


def test_train_run_unsupported():
    from refimpl import recipes
    from refimpl.tasks import make_task
    task = make_task("reverse", seed=0, n_train=8, n_eval=2)
    assert not hasattr(tr.trl_dpo, "train_run")
    with pytest.raises(Unsupported):
        tr.trl_grpo.train_run("unused", task, recipes.default_config("dapo"), 1, 0, None)
    with pytest.raises(Unsupported):                        # the KL in the reward: not GRPO's
        tr.trl_grpo.train_run("unused", task, recipes.default_config("grpo", kl_in="reward"), 1, 0,
                              None)
