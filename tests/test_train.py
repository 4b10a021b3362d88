"""The training loops, short: 20 deterministic steps each, judged by what a broken loop does.

A correct loop does not visibly improve in 20 steps on a 2-core CPU, but a loop with the advantage
sign flipped drives the sampled reward to ~0, and a loop that drops its KL term drifts as far as a
beta = 0 run. So each test runs the loop and its mutant (kept here, beside the test) and asserts
both sides. The full learning runs are ``tests/test_train_slow.py`` (``tox -e slow``); the
short runs of rloo (grpo's loop with another loss), reinforce_pp and ppo are marked slow too.

Bounds come from a sweep over seeds 0, 1, 2 (20 steps, 16 prompts x G 8, reverse task, one
thread); the tests run seed 0, which reproduces bit for bit.

| loop         | last-5-step sampled reward, correct / flipped | KL, last 5 steps, correct  |
|--------------|-----------------------------------------------|----------------------------|
| grpo         | 0.134 / 0.008, 0.139 / 0.006, 0.180 / 0.020   | 0.563, 0.627, 0.798        |
| rloo         | 0.105 / 0.000, 0.131 / 0.000, 0.114 / 0.000   | 0.799, 0.806, 1.030        |
| reinforce_pp | 0.141 / 0.000, 0.155 / 0.000, 0.175 / 0.000   | 0.782, 0.671, 0.789        |
| ppo          | 0.108 / 0.000, 0.216 / 0.000, 0.175 / 0.000   | 0.499, 0.335, 0.675        |
The start policy's sampled reward (800 samples) is 0.111, 0.156, 0.104. Rules that hold on every
seed: correct >= 0.8 x start; flipped < 0.5 x start and < 0.5 x correct. A loop that never updates
would keep the reward too, so the correct run must also have moved: KL to the reference over
the last 5 steps > 0.1 (a loop that never steps has exactly 0, shown by
``test_a_loop_that_never_steps_stays_at_the_reference``).

KL, mean over the last 5 steps, beta = 1 / beta = 0 (seeds 0, 1, 2). grpo (KL in the loss):
0.089 / 0.788, 0.136 / 0.684, 0.098 / 1.023 (ratios 0.11, 0.20, 0.10); reinforce_pp (KL in
the per-token reward): 0.101 / 0.780, 0.145 / 0.811, 0.105 / 0.903 (ratios 0.13, 0.18, 0.12).
Rule: beta = 1 < 0.5 x beta = 0; each mutant that drops the term reproduces the beta = 0 run.
"""

from __future__ import annotations

import json

import pytest
import torch

from refimpl import models, recipes, train
from refimpl.policy_loss import ppo_clip_loss
from refimpl.tasks import make_task
from refimpl.train import common

SHORT = dict(seed=0, steps=20, prompts_per_step=16, eval_every=10 ** 6)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- mutants, kept beside the tests that reject them --------------------------------------------

def advantage_sign_flipped(logp, old_logp, advantages, *args, **kwargs):
    """MUTANT: the clipped loss on -A, so the loop pushes down what scored well."""
    return ppo_clip_loss(logp, old_logp, -advantages, *args, **kwargs)


def kl_term_dropped(clipped_steps):
    """MUTANT: the KL term never reaches the loss, whatever beta says."""
    def wrapper(model, batch, config, advantages, ref_logp, kl_in_loss):
        return clipped_steps(model, batch, config, advantages, ref_logp, False)
    return wrapper


def _short_run(algorithm, monkeypatch=None, mutant=None, base=SHORT, **fields):
    config = train.config_for(algorithm, **{**base, **fields})
    if mutant is not None:
        monkeypatch.setattr(recipes, *mutant)
    try:
        return train.run(config, None, progress=False)
    finally:
        if mutant is not None:
            monkeypatch.undo()


def _last5(rows, key="reward"):
    values = [r[key] for r in rows if key in r]
    return sum(values[-5:]) / 5


def _start_reward(seed=0, samples=800):
    task = make_task("reverse", seed=seed)
    path = common.sft_policy(task, seed)
    model, tokenizer = models.load_causal_lm(path), models.load_tokenizer(path)
    torch.manual_seed(1234)
    prompts = [task.eval_prompts[i % len(task.eval_prompts)] for i in range(samples)]
    out = common.sample(model, tokenizer, prompts, task.max_new_tokens)
    return sum(task.strict_reward(p, c) for p, c in zip(prompts, out["completions"])) / samples


@pytest.fixture(scope="module")
def start_reward():
    return _start_reward()


# ppo and reinforce_pp (and reinforce_pp's KL test below) run in the slow tier: the default run
# keeps one loop with its advantage from group statistics and one with the leave-one-out
# baseline, and the KL-in-the-loss case, within its five minutes on two cores
SLOW = pytest.mark.slow


@pytest.mark.parametrize("algorithm", ["grpo", pytest.param("rloo", marks=SLOW),
                                       pytest.param("reinforce_pp", marks=SLOW),
                                       pytest.param("ppo", marks=SLOW)])
def test_online_loop_keeps_reward_and_flipped_advantage_collapses_it(algorithm, monkeypatch,
                                                                   start_reward):
    rows = _short_run(algorithm)
    correct, moved = _last5(rows), _last5(rows, "kl")
    assert moved > 0.1, (f"{algorithm}: KL to the reference {moved:.3f} after 20 steps: the policy "
                         f"barely moved (a loop that never steps keeps it at exactly 0)")
    flipped = _last5(_short_run(algorithm, monkeypatch,
                                ("ppo_clip_loss", advantage_sign_flipped)))
    assert correct >= 0.8 * start_reward, (
        f"{algorithm}: sampled reward fell from {start_reward:.3f} to {correct:.3f} in 20 steps "
        f"(a correct loop keeps >= 0.8x; check the advantage's sign and the loss's)")
    assert flipped < 0.5 * start_reward and flipped < 0.5 * correct, (
        f"{algorithm}: with the advantage sign flipped the reward is {flipped:.3f} "
        f"(start {start_reward:.3f}, correct {correct:.3f}): the test cannot tell a broken loop")


def kl_dropped_from_the_reward(kl_penalized_rewards):
    """MUTANT: the per-token reward carries the score but no KL penalty, whatever beta says."""
    def wrapper(scores, logp, ref_logp, mask, beta, kind="k1"):
        return kl_penalized_rewards(scores, logp, ref_logp, mask, 0.0, kind)
    return wrapper


@pytest.mark.parametrize("algorithm, mutant", [
    ("grpo", ("_clipped_steps", kl_term_dropped(recipes._clipped_steps))),           # in the loss
    pytest.param("reinforce_pp", ("kl_penalized_rewards",
                                  kl_dropped_from_the_reward(recipes.kl_penalized_rewards)),
                 marks=SLOW),                                                         # in the reward
])
def test_kl_term_holds_the_policy_near_the_reference(algorithm, mutant, monkeypatch):
    free = _last5(_short_run(algorithm, beta=0.0), "kl")
    held = _last5(_short_run(algorithm, beta=1.0), "kl")
    dropped = _last5(_short_run(algorithm, monkeypatch, mutant, beta=1.0), "kl")
    assert held < 0.5 * free, f"KL with beta = 1 is {held:.3f}, beta = 0 {free:.3f}"
    assert not dropped < 0.5 * free, (
        f"the mutant without its KL term reached KL {dropped:.3f} < 0.5 x {free:.3f}: the test "
        f"cannot tell a dropped KL term")


def test_run_writes_metrics_curves_config_and_model(tmp_path):
    rows = train.run(train.config_for("grpo", **{**SHORT, "steps": 3, "eval_every": 2}),
                     tmp_path, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3] and len(rows) == 4
    for key in ("loss", "kl", "reward", "entropy", "distinct", "degenerate",
                "flag_kl_explosion", "flag_mode_collapse", "flag_degenerate_groups"):
        assert key in lines[0], key
    assert [r["step"] for r in lines if "eval_accuracy" in r] == [0, 2, 3]
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 3
    assert (tmp_path / "curves.png").stat().st_size > 1000
    model = models.load_causal_lm(tmp_path / "model")
    assert models.n_parameters(model) > 100_000


def test_sft_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("RLCONFORM_CACHE", str(tmp_path))
    task = make_task("reverse", seed=0)
    first = common.sft_policy(task, 0, steps=2)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert common.sft_policy(task, 0, steps=2) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.rglob("*.tmp*")], "a temporary SFT directory was left behind"


def test_red_flag_figures_on_hand_made_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    flags = common.red_flags(rewards, groups, ["12", "12", "3", "4", "5", "6"],
                             kl=torch.tensor([11.0, 12.0]), entropy=0.01)
    assert flags["degenerate"] == pytest.approx(2 / 3)        # groups 0 and 2 are all-equal
    assert flags["distinct"] == pytest.approx((0 + 1 + 1) / 3)    # (distinct - 1) / (G - 1)
    assert flags["kl"] == 11.5 and flags["flag_kl_explosion"]
    assert flags["flag_mode_collapse"]
    assert not flags["flag_degenerate_groups"]                 # 2/3 <= DEGENERATE = 0.8
    all_equal = common.red_flags(torch.zeros(6), groups, ["1", "2", "3", "4", "5", "6"],
                                 kl=torch.tensor([0.1]), entropy=1.0)
    assert all_equal["degenerate"] == 1.0 and all_equal["flag_degenerate_groups"]
    assert not all_equal["flag_mode_collapse"] and not all_equal["flag_kl_explosion"]


def test_credit_share_of_a_sequence_level_advantage_is_one_over_length():
    A = torch.tensor([[2.0, 2.0, 2.0, 2.0], [-1.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert common.credit_share(A, mask, 1) == pytest.approx((1 / 4 + 1 / 2) / 2)
    only = torch.tensor([[0.0, 3.0, 0.0, 0.0]])
    assert common.credit_share(only, torch.ones(1, 4), 1) == 1.0


# --- preference loops: chosen and rejected swapped ----------------------------------------------

def _swapped(loss):
    """MUTANT: the loss sees the rejected completion as the chosen one (the batch's labels
    swapped); the held-out margins are measured by the recipe apart from the loss, unswapped."""
    def wrapper(pc, pr, rc=None, rr=None, *args, **kwargs):
        if rc is None:                       # bradley_terry_loss(chosen, rejected, ...)
            return loss(pr, pc, *args, **kwargs)
        return loss(pr, pc, rr, rc, *args, **kwargs)
    return wrapper


# Held-out margin (200 pairs on eval prompts) after 20 steps, correct / swapped, seeds 0, 1, 2:
#   dpo           1.257 / -5.724,  0.896 / -5.664,  1.193 / -6.000   (log-ratio units, from 0)
#   ipo           1.189 / -4.636,  0.919 / -4.159,  1.066 / -4.224
#   reward_model  0.190 / -0.787,  0.540 / -0.511,  0.428 / -0.386   (score units, from ~0)
@pytest.mark.parametrize("algorithm, loss, rise", [
    ("dpo", "dpo_loss", 0.5),
    ("ipo", "ipo_loss", 0.5),
    ("reward_model", "bradley_terry_loss", 0.1),
])
def test_preference_loop_widens_the_held_out_margin_and_swapped_labels_reverse_it(
        algorithm, loss, rise, monkeypatch):
    fields = dict(base={}, seed=0, steps=20, eval_every=20)
    correct = _short_run(algorithm, **fields)
    swapped = _short_run(algorithm, monkeypatch, (loss, _swapped(getattr(recipes, loss))),
                         **fields)
    figure = "eval_margin"
    first, last = correct[0][figure], correct[-1][figure]
    assert last > first + rise, f"{algorithm}: held-out margin {first:.3f} -> {last:.3f} in 20 steps"
    assert swapped[-1][figure] < first - rise, (
        f"{algorithm}: with chosen and rejected swapped the margin went {first:.3f} -> "
        f"{swapped[-1][figure]:.3f}: the test cannot tell swapped labels")


# --- the loops read as the papers do ------------------------------------------------------------

def test_every_loop_config_field_has_a_docstring_and_every_loop_cites_a_paper():
    import ast
    import importlib
    import inspect
    import re

    missing = []
    for algorithm, (module_name, class_name, _) in train.LOOPS.items():
        module = importlib.import_module(f"refimpl.train.{module_name}")
        if not re.search(r"arXiv:\d{4}\.\d{4,5}", module.__doc__ or ""):
            missing.append(f"refimpl/train/{module_name}.py cites no arXiv paper")
        tree = ast.parse(inspect.getsource(getattr(module, class_name)))
        body = tree.body[0].body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                after = body[i + 1] if i + 1 < len(body) else None
                if not (isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                        and isinstance(after.value.value, str)):
                    missing.append(f"{class_name}.{node.target.id} has no docstring")
    assert not missing, "\n".join(missing)


def test_loop_defaults_are_the_reference_sheets_typical_values():
    grpo, ppo = train.config_for("grpo"), train.config_for("ppo")
    assert (grpo.clip_low, grpo.clip_high, grpo.beta, grpo.group_size, grpo.temperature) == (
        0.2, 0.2, 0.04, 8, 1.0)
    assert (ppo.clip_low, ppo.lam, ppo.gamma, ppo.temperature) == (0.2, 0.95, 1.0, 1.0)
    dapo, dr = train.config_for("dapo"), train.config_for("dr_grpo")
    assert (dapo.clip_high, dapo.beta, dapo.agg) == (0.28, 0.0, "token-mean")
    assert (dr.scale, dr.agg) == ("none", "seq-mean-token-sum-norm")


def optimizer_never_steps(self, closure=None):
    """MUTANT: gradients are computed, the weights never change."""
    return None


def test_a_loop_that_never_steps_stays_at_the_reference(monkeypatch):
    monkeypatch.setattr(torch.optim.Adam, "step", optimizer_never_steps)
    rows = train.run(train.config_for("grpo", **{**SHORT, "steps": 3}), None, progress=False)
    assert [r["kl"] for r in rows if "kl" in r] == [0.0, 0.0, 0.0]


def test_process_advantages_put_all_their_mass_on_the_deciding_token():
    task = make_task("decisive", seed=0)
    prompt = task.eval_prompts[0]
    right = task.targets[prompt]
    wrong = right[:2] + str((int(right[2]) + 1) % 10) + right[3:]
    A = common.process_advantages(task, [prompt, prompt], [right, wrong], torch.tensor([0, 0]),
                                  torch.Size([2, 5]))
    assert A[:, 2].tolist() == [0.5, -0.5] and A[:, [0, 1, 3, 4]].abs().sum() == 0
    assert common.credit_share(A, torch.ones(2, 5), 2) == 1.0


def test_every_model_the_loops_build_or_load_has_dropout_zero():
    tok = models.build_tokenizer()
    for arch in models.ARCHS:
        for build in (models.causal_lm, models.value_model, models.reward_model):
            assert set(models.dropout_probabilities(build(tok, arch))) == {0.0}, (arch, build)


# --- the command --------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--set", "eval_every=0"], "eval_every must be an int >= 1"),
    (["--set", "sft_steps=1.5"], "--set sft_steps=1.5: expected int or none"),
    (["--set", "extra=x"], "--set extra: not a field of GRPOConfig that can be set"),
    (["--set", "lr=none"], "--set lr: may not be None"),
    (["--set", "agg=foo"], "agg must be one of"),
    (["--set", "group_size=1"], "group_size must be an int >= 2"),
    (["--set", "grad_accum=3"], "grad_accum must divide prompts_per_step * group_size = 256"),
    (["--set", "reward=foo"], "reward must be one of"),
    (["--set", "nope"], "--set expects FIELD=VALUE"),
    (["--device", "foo"], "device must be cpu or cuda"),
    (["--task", "foo"], "--task foo: not a task"),
    (["--preset", "reward-hacking"], "preset 'reward-hacking' is a ppo_rm run, not grpo"),
])
def test_train_command_mistakes_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    from conformance.cli import main

    out = tmp_path / "run"
    assert main(["train", "grpo", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlconform: ") and message in err and err.count("\n") == 1, err
    assert not out.exists(), "a refused command created its output directory"


def test_train_command_refuses_a_model_directory_that_is_not_a_causal_lm(tmp_path, capsys):
    from conformance.cli import main

    tok = models.build_tokenizer()
    models.save(models.reward_model(tok), tok, tmp_path / "rm")
    assert main(["train", "grpo", "--out", str(tmp_path / "o"), "--model",
                 str(tmp_path / "rm")]) == 2
    assert "not a causal LM" in capsys.readouterr().err


def test_train_command_without_tensorboard_installed_says_so(tmp_path, capsys, monkeypatch):
    import importlib.util

    from conformance.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(["train", "grpo", "--out", str(tmp_path / "o"), "--tensorboard"]) == 2
    assert "--tensorboard needs the tensorboard package" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_command_offers_exactly_the_loops_and_presets_refimpl_has():
    import argparse

    from conformance.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    choices = {a.dest: a.choices for a in sub.choices["train"]._actions}
    assert tuple(choices["algorithm"]) == train.ALGORITHMS
    assert tuple(choices["preset"]) == tuple(train.PRESETS)
