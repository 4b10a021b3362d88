"""Summarise the committed training runs (reports/training/<run>/metrics.jsonl) as README.md.

    python reports/training/summarize.py reports/training
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FLAGS = ("flag_kl_explosion", "flag_mode_collapse", "flag_degenerate_groups",
         "flag_reward_hacking")


def _series(rows, key):
    return [r[key] for r in rows if isinstance(r.get(key), (int, float))
            and not isinstance(r.get(key), bool)]


def _mean(values):
    return sum(values) / len(values) if values else float("nan")


def _fmt(x, digits=3):
    return "" if x is None or x != x else f"{x:.{digits}f}"


def summarize(root: Path) -> str:
    lines = ["# Training runs", "",
             "Written by `reports/training/regenerate.sh` (the slow tier, "
             "`tests/test_train_slow.py`), one directory per run: `metrics.jsonl` (one object "
             "per step), `config.json` (every field of the loop's dataclass) and `curves.png` "
             "(red flags shaded). Seeded, one thread, a 2-core CPU. Do not edit: regenerate.", "",
             "| run | algorithm | task | seed | steps | time (s) | eval accuracy first -> last "
             "| reward first 10 -> last 10 steps | KL last 10 | red flags fired (first step) "
             "| other |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in sorted(p for p in root.iterdir() if (p / "metrics.jsonl").exists()):
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        cfg = json.loads((d / "config.json").read_text())
        algorithm = cfg.get("algorithm") or d.name
        acc = _series(rows, "eval_accuracy")
        reward = _series(rows, "reward")
        kl = _series(rows, "kl")
        flags = []
        for f in FLAGS:
            hits = [r["step"] for r in rows if r.get(f)]
            if hits:
                flags.append(f"{f[5:].replace('_', ' ')} ({hits[0]}; {len(hits)} steps)")
        other = []
        for key in ("eval_margin", "eval_pair_accuracy", "strict_pair_accuracy", "proxy_reward",
                    "true_reward", "credit_share", "credit_share_process"):
            s = _series(rows, key)
            if s:
                other.append(f"{key} {_fmt(s[0])} -> {_fmt(s[-1])}")
        time_s = _series(rows, "time_s")
        lines.append(
            f"| [{d.name}]({d.name}/curves.png) | {algorithm} | {cfg.get('task', '')} "
            f"| {cfg.get('seed', '')} | {cfg.get('steps', '')} | {_fmt(time_s[-1] if time_s else None, 0)} "
            f"| {_fmt(acc[0]) if acc else ''} -> {_fmt(acc[-1]) if acc else ''} "
            f"| {_fmt(_mean(reward[:10]))} -> {_fmt(_mean(reward[-10:]))} "
            f"| {_fmt(_mean(kl[-10:]))} | {'; '.join(flags) or 'none'} | {'; '.join(other)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent)
    (root / "README.md").write_text(summarize(root))
    print(f"wrote {root / 'README.md'}")
