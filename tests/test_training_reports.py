"""The committed training runs (reports/training/) say what the slow tier asserts, and what the
docs quote from them: checked in the default run, without training.

The runs are written by ``reports/training/regenerate.sh`` (the slow tier with
``RLCONFORM_WRITE_TRAINING=1``); a run missing here, or one that no longer meets its threshold,
means they were not regenerated after a change to the loops.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refimpl import train
from tests.test_train_slow import ONLINE, RUNS, SWEEP

ROOT = Path(__file__).resolve().parents[1] / "reports" / "training"


def _rows(name):
    return [json.loads(x) for x in (ROOT / name / "metrics.jsonl").read_text().splitlines()]


def _series(rows, key):
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool)]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_slow_run_is_committed_with_its_config_and_curves(name):
    for f in ("metrics.jsonl", "config.json", "curves.png"):
        assert (ROOT / name / f).is_file(), f"reports/training/{name}/{f} missing: regenerate"
    algorithm, preset, fields = RUNS[name]
    config = json.loads((ROOT / name / "config.json").read_text())
    expected = train.config_for(algorithm, preset, **fields)
    for key in ("algorithm", "task", "seed", "steps", "lr"):
        if hasattr(expected, key):
            assert config[key] == getattr(expected, key), (
                f"reports/training/{name} ran with {key}={config[key]!r}; the loop's default is "
                f"now {getattr(expected, key)!r}: regenerate")
    assert len(_rows(name)) == config["steps"] + 1


@pytest.mark.parametrize("name", sorted(n for n in RUNS if RUNS[n][0] in ONLINE
                                        and RUNS[n][1] is None and not n.startswith("credit")))
def test_committed_online_runs_lift_eval_accuracy_by_a_tenth(name):
    acc = _series(_rows(name), "eval_accuracy")
    assert acc[-1] - acc[0] >= 0.10, f"{name}: {acc[0]} -> {acc[-1]}"


def test_committed_sweeps_are_the_numbers_the_slow_tests_state():
    for algorithm, runs in (("grpo", ("grpo", "grpo-seed1", "grpo-seed2")),
                            ("dpo", ("dpo", "dpo-seed1", "dpo-seed2"))):
        acc = [_series(_rows(r), "eval_accuracy") for r in runs]
        assert tuple(round(a[0], 3) for a in acc) == SWEEP[algorithm]["start"]
        assert tuple(round(a[-1], 3) for a in acc) == SWEEP[algorithm]["end"]
    margins = [round(_series(_rows(r), "eval_margin")[-1], 3)
               for r in ("dpo", "dpo-seed1", "dpo-seed2")]
    assert tuple(margins) == SWEEP["dpo"]["eval_margin"]


@pytest.mark.parametrize("name, flag", [
    ("kl-explosion", "flag_kl_explosion"), ("mode-collapse", "flag_mode_collapse"),
    ("degenerate-groups", "flag_degenerate_groups"), ("reward-hacking", "flag_reward_hacking"),
])
def test_committed_red_flag_runs_fire_their_flag(name, flag):
    assert any(r.get(flag) for r in _rows(name)), f"{flag} never fired in {name}"


def test_committed_healthy_runs_fire_no_red_flag():
    for flag in ("flag_kl_explosion", "flag_mode_collapse", "flag_degenerate_groups"):
        assert not any(r.get(flag) for r in _rows("grpo")), flag
    assert not any(r.get("flag_reward_hacking") for r in _rows("ppo_rm"))


def test_committed_reward_model_reaches_three_quarters_pair_accuracy():
    assert _series(_rows("reward_model"), "eval_pair_accuracy")[-1] >= 0.75
