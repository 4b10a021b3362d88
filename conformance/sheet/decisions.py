"""The algorithm decision tree: every leaf linked to its reference loop and its committed run,
with what it cost on the same task (read from the runs, never re-timed), and the preference
leaves' distinction (clean vs noisy pairs) computed on the losses."""

from __future__ import annotations

import math

import torch

from conformance.sheet import runs
from conformance.sheet.common import DTYPE, canonical, code_link, file_link, rel
from conformance.sheet.ledger import Ledger, sig

#: leaf label -> (algorithm, the committed run on the reverse task, seed 0)
LEAVES = [
    ("offline preferences, clean", "DPO", "dpo"),
    ("offline preferences, noisy", "IPO", "ipo"),
    ("online, compute for a critic", "PPO", "ppo"),
    ("online, memory-bound, verifiable reward", "GRPO", "grpo"),
    ("online, memory-bound, unbiased baseline wanted", "RLOO", "rloo"),
    ("online, simplest setup", "REINFORCE++", "reinforce_pp"),
    ("reasoning or code checked by a program", "GRPO, rule-based reward", "grpo"),
]
LOOP_FILES = {"dpo": "dpo.py", "ipo": "ipo.py", "ppo": "ppo.py", "grpo": "grpo.py",
              "rloo": "rloo.py", "reinforce_pp": "reinforce_pp.py"}
ONLINE = ["grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo"]
SEEDS = ["grpo", "grpo-seed1", "grpo-seed2"]


def _noisy_vs_clean(led: Ledger) -> str:
    """With every pair agreeing (p = 1), DPO's loss keeps falling as the margin grows; IPO's
    has its minimum at a finite margin 1/(2 tau)."""
    beta = tau = 0.1
    z = torch.tensor([10.0], dtype=DTYPE, requires_grad=True)
    zero = torch.zeros(1, dtype=DTYPE)
    (g_dpo,) = torch.autograd.grad(canonical("dpo_loss")(z, zero, zero, zero, beta=beta).sum(), z)
    h_star = 1 / (2 * tau)
    h = torch.tensor([h_star], dtype=DTYPE, requires_grad=True)
    (g_ipo,) = torch.autograd.grad(canonical("ipo_loss")(h, zero, zero, zero, tau=tau).sum(), h)
    want = -beta / (1 + math.exp(beta * 10.0))
    return (f"Why IPO for noisy pairs: when the pairs all agree, DPO's loss has no minimum at a "
            f"finite margin (at a log-ratio margin h = 10, β = {beta}, its slope in h is still "
            f"{led.value('DPO slope at margin 10', float(g_dpo[0]), want, 1e-12)}, the closed form "
            "−β σ(−β·10)), so a pair that is wrong or a coin-flip is pushed as hard as a "
            "true one and π drifts from π_ref without bound. IPO regresses h to 1/(2τ) = "
            f"{sig(h_star)} (τ = {tau}): its slope there is "
            f"{led.bound('IPO stationary at 1/(2 tau)', abs(float(g_ipo[0])), 1e-12)}.")


def section(led: Ledger, figs: dict) -> str:
    led.section = "Decision tree"
    committed = runs.summaries()
    lines = [
        "## Algorithm decision tree",
        "",
        "The sheet's tree, leaf by leaf, with the reference loop that trains it on a tiny causal "
        "LM (`rlconform train ALGO`) and the committed run of that loop on the same task "
        "(`reverse`: reverse a digit string, reward 1 when the program's check passes, seed 0). "
        "Costs are as the runs recorded them on a 2-core CPU, one thread, two runs at a time "
        "([`reports/training/`](../reports/training/README.md)); a step is the median step, "
        "without the evaluations.",
        "",
        "```",
        "align a language model with preferences",
        "├── only offline preference pairs",
        "│   ├── pairs are clean ............................ DPO",
        "│   └── pairs are noisy ............................ IPO",
        "├── online RL is possible",
        "│   ├── compute for a critic ....................... PPO",
        "│   ├── memory-bound",
        "│   │   ├── verifiable reward ...................... GRPO",
        "│   │   └── an unbiased baseline wanted ............ RLOO",
        "│   └── simplest setup ............................. REINFORCE++",
        "└── reasoning or code checked by a program ......... GRPO with a rule-based reward",
        "```",
        "",
        "| leaf | algorithm | loop | committed run | models held | samples per prompt | steps "
        "| updates per batch | s / step | greedy accuracy first → last "
        "| reward, first → last 10 steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    same_task = True
    for leaf, name, run in LEAVES:
        s = committed.get(run)
        loop = file_link(f"refimpl/train/{LOOP_FILES[run]}", LOOP_FILES[run])
        if s is None:
            lines.append(f"| {leaf} | {name} | {loop} | (not committed) | | | | | | | |")
            same_task = False
            continue
        same_task &= s["task"] == "reverse" and s["config"].get("seed") == 0
        samples = s["group"] if s["group"] != "—" else "0 (offline pairs)"
        lines.append(f"| {leaf} | {name} | {loop} | [{run}]({rel(s['dir'])}/curves.png) | "
                     f"{s['models']} ({s['held']}) | {samples} | {s['steps']} | "
                     f"{s['config'].get('epochs', 1)} | {s['step_s']} | "
                     f"{s['acc']} | {s['reward']} |")
    same = led.holds("every leaf's run is on the reverse task, seed 0", same_task, "the same task")
    seeds = [committed[n] for n in SEEDS if n in committed]
    variants = [committed[n] for n in ("dr_grpo", "dapo") if n in committed]
    rule = ""
    if seeds:
        reward_fn = _task_reward()
        rule = ("The rule-based leaf is the GRPO loop itself: every task's reward is a program "
                f"({reward_fn}); here the check is exact, so there is no learned scorer to exploit "
                "(compare reward hacking below). Across seeds 0, 1, 2 the GRPO run's greedy "
                "accuracy went "
                + "; ".join(s["acc"] for s in seeds)
                + ("; its variants (seed 0) " + "; ".join(
                    f"{v['name']} {v['acc']}" for v in variants) if variants else "")
                + ".")
    rl = {n: (list(range(len(committed[n]["rewards"]))), committed[n]["rewards"])
          for n in ONLINE if n in committed}
    evals = {n: ([e[0] for e in committed[n]["evals"]], [e[1] for e in committed[n]["evals"]])
             for n in ONLINE + ["dpo", "ipo"] if n in committed}
    figs["learning_curves.png"] = lambda path: _figures().learning_curves_figure(path, rl, evals)
    seeded = sorted({committed[n]["algorithm"] for n in committed
                     if n.rsplit("-seed", 1)[0] in ("grpo", "dpo") and "-seed" in n})
    layers = _layers()
    steps = sorted({committed[r]["steps"] for _, _, r in LEAVES if r in committed})
    lines += [
        "",
        f"All leaves ran on {same}. Read with care: one seed each (more for "
        f"{', '.join(seeded) or 'none'}), {' or '.join(map(str, steps))} steps of a {layers}-layer "
        "model; the sheet's claim that PPO is the most stable is not something one run can show. "
        "What the table does show is the cost: PPO holds a critic that the others do not, and "
        "DPO and IPO draw no samples at all. The step times are wall-clock medians of runs that "
        "shared a 2-core machine two at a time: compare them only where they differ by more "
        "than the two preference runs, which do the same work per step, differ from each other.",
        "",
        rule,
        "",
        _noisy_vs_clean(led),
        "",
        "![Learning curves of the committed runs](sheet/learning_curves.png)",
    ]
    return "\n".join(lines)


def _layers() -> int:
    """The number of transformer layers of the loops' tiny models (``refimpl.models.config``)."""
    import inspect

    from refimpl import models
    return inspect.signature(models.config).parameters["layers"].default


def _task_reward() -> str:
    from refimpl.tasks import Task
    return code_link(Task.reward, "refimpl.tasks.Task.reward")


def _figures():
    from conformance.sheet import figures
    return figures


__all__ = ["section", "LEAVES"]
