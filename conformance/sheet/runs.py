"""The committed training runs (``reports/training/<run>/``), read, never re-run or re-timed.

Each run directory holds ``config.json`` (the loop's config) and ``metrics.jsonl`` (one row per
step with ``time_s``, the run's own clock since its start, and an evaluation row every
``eval_every`` steps). A step's time is the median increment of ``time_s`` between consecutive
training rows, so the evaluations (greedy decoding of 200 prompts) do not count.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from conformance.sheet.common import ROOT, read_config, read_metrics
from conformance.sheet.ledger import fixed, sig

TRAINING = ROOT / "reports" / "training"
SWEEP = TRAINING / "sweep"


def models_held(config: dict) -> list[str]:
    """The models a loop builds for ``config`` (``refimpl/train/*.py``): the trained policy, the
    frozen reference, PPO's critic, a frozen reward model when one scores the completions."""
    algorithm = config.get("algorithm")
    if algorithm == "reward_model":
        return ["reward model"]
    held = ["policy", "reference"]
    if algorithm in ("ppo", "ppo_rm"):
        held.append("critic")
        if algorithm == "ppo_rm" or config.get("reward_model"):
            held.append("reward model")
    return held


def step_times(rows: list[dict]) -> list[float]:
    times = [r["time_s"] for r in rows if "step" in r and ("reward" in r or "loss" in r)]
    return [b - a for a, b in zip(times, times[1:])]


def summary(run_dir: Path) -> dict:
    config = read_config(run_dir)
    rows = read_metrics(run_dir)
    steps = [r for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r]
    rewards = [r["reward"] for r in steps if "reward" in r]
    dt = step_times(rows)
    out = {
        "name": run_dir.name,
        "dir": run_dir.relative_to(ROOT).as_posix(),
        "config": config,
        "rows": rows,
        "algorithm": config.get("algorithm"),
        "task": config.get("task"),
        "steps": len(steps),
        "models": len(models_held(config)),
        "held": ", ".join(models_held(config)),
        "prompts": config.get("prompts_per_step", config.get("pairs_per_step")),
        "group": config.get("group_size", "—"),
        "step_s": sig(statistics.median(dt), 2) if dt else "—",
        "total_s": f"{rows[-1]['time_s']:.0f}",
        "max_s": rows[-1]["time_s"],
        "acc": f"{fixed(evals[0][1])} → {fixed(evals[-1][1])}" if len(evals) > 1 else "—",
        "evals": evals,
        "rewards": rewards,
    }
    if rewards:
        k = min(10, len(rewards))
        out["reward"] = (f"{fixed(statistics.fmean(rewards[:k]))} → "
                         f"{fixed(statistics.fmean(rewards[-k:]))}")
    else:
        out["reward"] = "—"
    kls = [r["kl"] for r in steps if "kl" in r]
    out["kl_last"] = fixed(statistics.fmean(kls[-10:])) if kls else "—"
    return out


def summaries(root: Path = TRAINING) -> dict[str, dict]:
    """Every committed run directly under ``root`` (one with a ``metrics.jsonl``), by name."""
    if not root.is_dir():
        return {}
    return {d.name: summary(d) for d in sorted(root.iterdir())
            if (d / "metrics.jsonl").is_file() and (d / "config.json").is_file()}
