"""The training loops, in full: each learns within its default budget, and each red flag fires on
the run built to trigger it and stays silent on a healthy run. ``tox -e slow`` (marker ``slow``).

Every run writes metrics.jsonl, config.json and curves.png; with ``RLCONFORM_WRITE_TRAINING=1``
they go to ``reports/training/<run>/`` (``reports/training/regenerate.sh``), which is what the
committed figures and ``reports/training/README.md`` come from. Runs are single-threaded and
seeded; on a 2-core CPU each takes at most a few minutes (``time_s`` in its metrics).

Thresholds and what was measured (reports/training/README.md has every run's numbers):
- online loops: greedy strict accuracy on 200 held-out prompts rises by >= 0.10 (the SFT start
  is 0.425 on reverse, seed 0). Greedy accuracy on 200 prompts is noisy: between evaluations 25
  steps apart the committed runs fall by up to 0.105 (RLOO: 0.64, 0.535, 0.675), so the rise is
  read at the last step; the smallest rise is GRPO seed 1's (0.175). GRPO, seeds 0/1/2: SWEEP
  below.
- DPO and IPO: the held-out implicit-reward margin and the greedy accuracy both rise; DPO on
  seeds 0/1/2: SWEEP.
- reward model: held-out pair accuracy >= 0.75.
- ppo_rm: the proxy (reward-model) reward rises.
- red flags: KL explosion fires on the kl-explosion preset, mode collapse on the mode-collapse
  preset, degenerate groups on the degenerate-groups preset, reward hacking on the
  reward-hacking preset; none of the first three fires on the healthy GRPO run, nor reward
  hacking on PPO against a healthy reward model.
- credit assignment (task ``decisive``): the share of advantage mass on the deciding token, for
  GRPO (1/length), a process reward (1) and PPO with GAE (measured).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from refimpl import train

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1] / "reports" / "training"

#: run name -> (algorithm, preset, fields)
RUNS = {
    "grpo": ("grpo", None, {}),
    "grpo-seed1": ("grpo", None, {"seed": 1}),
    "grpo-seed2": ("grpo", None, {"seed": 2}),
    "dr_grpo": ("dr_grpo", None, {}),
    "dapo": ("dapo", None, {}),
    "rloo": ("rloo", None, {}),
    "reinforce_pp": ("reinforce_pp", None, {}),
    "ppo": ("ppo", None, {}),
    "dpo": ("dpo", None, {}),
    "dpo-seed1": ("dpo", None, {"seed": 1}),
    "dpo-seed2": ("dpo", None, {"seed": 2}),
    "ipo": ("ipo", None, {}),
    "reward_model": ("reward_model", None, {}),
    "ppo_rm": ("ppo_rm", None, {}),
    "kl-explosion": ("grpo", "kl-explosion", {}),
    "mode-collapse": ("grpo", "mode-collapse", {}),
    "degenerate-groups": ("grpo", "degenerate-groups", {}),
    "reward-hacking": ("ppo_rm", "reward-hacking", {}),
    "credit-grpo": ("grpo", None, {"task": "decisive"}),
    "credit-ppo": ("ppo", None, {"task": "decisive"}),
}
ONLINE = {"grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo"}

#: The seed sweeps (seeds 0 / 1 / 2), measured by reports/training/regenerate.sh on a 2-core
#: CPU, two runs at a time (reports/training/<run>/metrics.jsonl; README.md there has them all).
#: GRPO, greedy strict accuracy on 200 held-out prompts, start -> step 150:
#:     0.425 -> 0.750, 0.575 -> 0.750, 0.485 -> 0.900   (rise 0.325, 0.175, 0.415; 206-266 s)
#: DPO, step 100: greedy accuracy 0.425 -> 0.640, 0.575 -> 0.725, 0.485 -> 0.725; held-out
#:     margin 0 -> 2.955, 3.681, 3.069; held-out pair accuracy 0.855, 0.865, 0.955   (25-27 s)
#: The thresholds (a rise of 0.10; a margin rise of 1.0) hold on every seed with room.
SWEEP = {
    "grpo": {"start": (0.425, 0.575, 0.485), "end": (0.750, 0.750, 0.900)},
    "dpo": {"start": (0.425, 0.575, 0.485), "end": (0.640, 0.725, 0.725),
            "eval_margin": (2.955, 3.681, 3.069)},
}


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _run(name, tmp_path):
    algorithm, preset, fields = RUNS[name]
    out = ROOT / name if os.environ.get("RLCONFORM_WRITE_TRAINING") else tmp_path / name
    config = train.config_for(algorithm, preset, **fields)
    return train.run(config, out, progress=False)


def _series(rows, key):
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool)]


def _no_nan(rows, name):
    for r in rows:
        for k, v in r.items():
            assert v is not None and not (isinstance(v, float) and math.isnan(v)), (
                f"{name}: {k} is NaN at step {r['step']}")


def _never(rows, flag, name):
    hits = [r["step"] for r in rows if r.get(flag)]
    assert not hits, f"{name}: {flag} fired on a healthy run at steps {hits[:10]}"


@pytest.mark.parametrize("name", sorted(n for n in RUNS if RUNS[n][0] in ONLINE
                                        and RUNS[n][1] is None and not n.startswith("credit")))
def test_online_loop_lifts_eval_accuracy_by_a_tenth(name, tmp_path):
    rows = _run(name, tmp_path)
    _no_nan(rows, name)
    acc = _series(rows, "eval_accuracy")
    assert acc[-1] - acc[0] >= 0.10, f"{name}: eval accuracy {acc[0]:.3f} -> {acc[-1]:.3f}"
    if name == "grpo":                        # the healthy run: no red flag
        for flag in ("flag_kl_explosion", "flag_mode_collapse", "flag_degenerate_groups"):
            _never(rows, flag, name)


@pytest.mark.parametrize("name", ["dpo", "dpo-seed1", "dpo-seed2", "ipo"])
def test_preference_loop_raises_margin_and_accuracy(name, tmp_path):
    rows = _run(name, tmp_path)
    _no_nan(rows, name)
    margin, acc = _series(rows, "eval_margin"), _series(rows, "eval_accuracy")
    assert margin[-1] > margin[0] + 1.0, f"{name}: held-out margin {margin[0]:.2f} -> {margin[-1]:.2f}"
    assert acc[-1] > acc[0], f"{name}: eval accuracy {acc[0]:.3f} -> {acc[-1]:.3f}"


def test_reward_model_reaches_three_quarters_pair_accuracy(tmp_path):
    rows = _run("reward_model", tmp_path)
    _no_nan(rows, "reward_model")
    assert _series(rows, "eval_pair_accuracy")[-1] >= 0.75


def test_ppo_against_a_healthy_reward_model_raises_proxy_without_hacking(tmp_path):
    rows = _run("ppo_rm", tmp_path)
    proxy = _series(rows, "proxy_reward")
    assert sum(proxy[-10:]) / 10 > sum(proxy[:10]) / 10, "proxy reward did not rise"
    _never(rows, "flag_reward_hacking", "ppo_rm")


def test_kl_explosion_fires_without_kl_and_with_a_high_learning_rate(tmp_path):
    rows = _run("kl-explosion", tmp_path)
    assert any(r.get("flag_kl_explosion") for r in rows)


def test_mode_collapse_fires_without_kl_and_with_a_high_learning_rate(tmp_path):
    rows = _run("mode-collapse", tmp_path)
    fired = [r["step"] for r in rows if r.get("flag_mode_collapse")]
    assert fired, "mode collapse never fired"
    assert _series(rows, "distinct")[-1] < _series(rows, "distinct")[0] / 4


def test_degenerate_groups_fire_on_a_task_too_hard_for_the_group(tmp_path):
    rows = _run("degenerate-groups", tmp_path)
    fired = [r for r in rows if "degenerate" in r]
    assert sum(bool(r["flag_degenerate_groups"]) for r in fired) >= 0.8 * len(fired)


def test_reward_hacking_fires_against_a_length_biased_reward_model(tmp_path):
    rows = _run("reward-hacking", tmp_path)
    assert rows[-2].get("flag_reward_hacking") or any(r.get("flag_reward_hacking") for r in rows)
    proxy, true = _series(rows, "proxy_reward"), _series(rows, "true_reward")
    assert proxy[-1] > proxy[0] and true[-1] < true[0]


def test_credit_assignment_shares_on_the_decisive_token(tmp_path):
    """One token of five decides the reward. GRPO's loop gives every token of a completion its
    sequence-level advantage, so the deciding token gets 1/length of the mass (length 3 to 5
    here); the process-reward figure (per-token rewards against the group's mean at each
    position) puts all of it there. PPO's GAE advantage depends on what its critic has learned
    and on lambda: it is measured and reported (reports/training/README.md), bounded only by
    what a share can be."""
    grpo = _run("credit-grpo", tmp_path)
    ppo = _run("credit-ppo", tmp_path)
    share = _series(grpo, "credit_share")
    assert share and all(0.2 <= s <= 1 / 3 for s in share), share[:5]
    assert all(s == 1.0 for s in _series(grpo, "credit_share_process"))
    ppo_share = _series(ppo, "credit_share")
    assert ppo_share and all(0.0 < s <= 1.0 for s in ppo_share), ppo_share[:5]


# --- the train_run checks (rlconform certify --slow) on refimpl's own loops -----------------------

@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce_pp", "ppo"])
def test_refimpl_passes_its_short_run_checks(algorithm, tmp_path, monkeypatch):
    from conformance.adapters.reference import adapter
    from conformance.checks import all_checks
    from conformance.runner import run_check

    monkeypatch.setenv("RLCONFORM_RUNS_DIR", str(tmp_path))
    (chk,) = all_checks(f"{algorithm}/run-reward-rises", slow=True)
    row = run_check(chk, adapter)
    assert row["status"] == "pass", row
    assert (tmp_path / "refimpl" / algorithm / "curves.png").exists()


def test_a_run_that_never_learns_fails_its_check():
    from conformance.checks import all_checks
    from conformance.runner import run_check
    from tests import mutants

    (chk,) = all_checks("grpo/run-reward-rises", slow=True)
    row = run_check(chk, mutants.adapter("run_never_learns"))
    assert row["status"] == "fail" and "less than the task's margin" in row["message"], row
