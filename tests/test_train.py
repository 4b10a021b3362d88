"""The training loops, short: 20 deterministic steps each, judged by what a broken loop does.

A correct loop does not visibly improve in 20 steps on a 2-core CPU, but a loop with the advantage
sign flipped drives the sampled reward to ~0, and a loop that drops its KL term drifts as far as a
beta = 0 run. So each test runs the loop and its mutant (kept here, beside the test) and asserts
both sides. The full learning runs are ``tests/test_train_slow.py`` (``tox -e slow``).

Bounds come from a sweep over seeds 0, 1, 2 (20 steps, 16 prompts x G 8, reverse task, one
thread); the tests run seed 0, which reproduces bit for bit.

| loop         | last-5-step sampled reward, correct / flipped (seeds 0, 1, 2)        |
|--------------|----------------------------------------------------------------------|
| grpo         | 0.134 / 0.005, 0.161 / 0.006, 0.184 / 0.036                           |
| rloo         | 0.113 / 0.000, 0.134 / 0.000, 0.119 / 0.000                           |
| reinforce_pp | 0.142 / 0.000, 0.177 / 0.000, 0.167 / 0.000                           |
| ppo          | 0.156 / 0.000, 0.227 / 0.000, 0.159 / 0.002                           |
The start policy's sampled reward (800 samples) is ~0.1-0.15. Rules that hold on every seed:
correct >= 0.8 x start; flipped < 0.5 x start and < 0.5 x correct.

KL (grpo, KL in the loss), mean over the last 5 steps, beta = 1 / beta = 0: 0.087 / 0.841,
0.160 / 0.792, 0.089 / 0.949 (ratios 0.10, 0.20, 0.09). Rule: beta = 1 < 0.5 x beta = 0.
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


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce_pp", "ppo"])
def test_online_loop_keeps_reward_and_flipped_advantage_collapses_it(algorithm, monkeypatch,
                                                                   start_reward):
    correct = _last5(_short_run(algorithm))
    flipped = _last5(_short_run(algorithm, monkeypatch,
                                ("ppo_clip_loss", advantage_sign_flipped)))
    assert correct >= 0.8 * start_reward, (
        f"{algorithm}: sampled reward fell from {start_reward:.3f} to {correct:.3f} in 20 steps "
        f"(a correct loop keeps >= 0.8x; check the advantage's sign and the loss's)")
    assert flipped < 0.5 * start_reward and flipped < 0.5 * correct, (
        f"{algorithm}: with the advantage sign flipped the reward is {flipped:.3f} "
        f"(start {start_reward:.3f}, correct {correct:.3f}): the test cannot tell a broken loop")


def test_kl_term_holds_the_policy_near_the_reference(monkeypatch):
    free = _last5(_short_run("grpo", beta=0.0), "kl")
    held = _last5(_short_run("grpo", beta=1.0), "kl")
    dropped = _last5(_short_run("grpo", monkeypatch,
                                ("_clipped_steps", kl_term_dropped(recipes._clipped_steps)),
                                beta=1.0), "kl")
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
    assert flags["distinct"] == pytest.approx((1 / 2 + 1 + 1) / 3)
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
