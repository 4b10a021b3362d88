"""The hyperparameter cheat sheet: the sheet's typical values beside refimpl's loop defaults and
each bundled framework's defaults (the ``framework_defaults`` its committed certification report
records), then what moving each one did in a small committed sweep of the reference loops
(``reports/training/sweep.sh``; read here, never re-run)."""

from __future__ import annotations

import json

from conformance.sheet import runs
from conformance.sheet.common import ROOT, file_link, rel
from conformance.sheet.ledger import Ledger, fixed

FRAMEWORKS = ["trl", "verl", "openrlhf", "torchrl", "liger", "skyrl"]
#: the sheet's typical value of each knob (its numbers; the wording is ours)
TYPICAL = {"clip ε": "0.1–0.2", "KL β": "0.01–0.1", "GAE λ": "0.95", "discount γ": "1.0",
           "group size": "8–16", "temperature": "0.7–1.0"}
#: knob -> (the sweep's runs as (label, run name), in order)
SWEEP = {
    "clip ε": [("0.05", "clip-0.05"), ("0.2 (default)", "grpo-default"), ("0.5", "clip-0.5")],
    "KL β": [("0", "beta-0"), ("0.04 (default)", "grpo-default"), ("0.4", "beta-0.4")],
    "GAE λ (PPO)": [("0", "lam-0"), ("0.95 (default)", "lam-0.95"), ("1", "lam-1")],
    "group size": [("2 (64 prompts)", "group-2"), ("4 (32 prompts)", "group-4"),
                   ("8 (16 prompts, default)", "grpo-default"), ("16 (8 prompts)", "group-16")],
    "temperature": [("0.7", "temperature-0.7"), ("1.0 (default)", "grpo-default"),
                    ("1.3", "temperature-1.3")],
}
RUN_BUDGET_S = 60.0


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, list):
        return " or ".join(_fmt(x) for x in v)
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _framework_cells(defaults: dict) -> dict[str, str]:
    lo, hi = defaults.get("clip_low"), defaults.get("clip_high")
    clip = _fmt(lo) if lo == hi else f"{_fmt(lo)} / {_fmt(hi)}"
    beta = _fmt(defaults.get("kl_beta"))
    where = defaults.get("kl_in")
    if defaults.get("kl_beta") is None:
        beta = f"— (no default; a {where} term)" if where else "—"
    elif where:
        beta += f" (in the {where})"
    else:
        enabled = [f"{_fmt(defaults[k])} in the {k.rsplit('_', 1)[1]}"
                   for k in ("kl_beta_if_in_loss", "kl_beta_if_in_reward") if defaults.get(k)]
        beta += f" (off; {', '.join(enabled)} when enabled)" if enabled else " (off)"
    return {"clip ε": clip, "KL β": beta, "GAE λ": _fmt(defaults.get("gae_lambda")),
            "discount γ": _fmt(defaults.get("gamma")),
            "group size": _fmt(defaults.get("group_size")),
            "temperature": _fmt(defaults.get("temperature"))}


def _refimpl_cells() -> dict[str, str]:
    from refimpl import train
    grpo, ppo = train.config_for("grpo"), train.config_for("ppo")
    return {"clip ε": _fmt(grpo.clip_low),
            "KL β": f"{_fmt(grpo.beta)} (GRPO, in the {grpo.kl_in}); "
                    f"{_fmt(ppo.beta)} (PPO, in the reward)",
            "GAE λ": _fmt(ppo.lam), "discount γ": _fmt(ppo.gamma),
            "group size": _fmt(grpo.group_size), "temperature": _fmt(grpo.temperature)}


def section(led: Ledger, figs: dict) -> str:
    led.section = "Hyperparameters"
    columns = {"refimpl loops": _refimpl_cells()}
    versions = []
    for fw in FRAMEWORKS:
        path = ROOT / "reports" / f"{fw}.json"
        if not path.is_file():
            continue
        report = json.loads(path.read_text())
        columns[fw] = _framework_cells(report.get("framework_defaults", {}))
        v = {k: val for k, val in report.get("versions", {}).items()
             if k not in ("python", "torch", "rlconform")}
        versions.append(f"[{fw}](../reports/{fw}.md) "
                        + ", ".join(f"{k} {val}" for k, val in v.items()))
    no_temperature = led.holds("no framework declares a default temperature",
                               all(c["temperature"] == "—" for n, c in columns.items()
                                   if n != "refimpl loops"), "none declares")
    head = "| knob | typical (the sheet) | " + " | ".join(columns) + " |"
    lines = [
        "## Hyperparameter cheat sheet",
        "",
        "The sheet's typical values beside the defaults of refimpl's loops and of each bundled "
        "framework, as its certification report records them (`framework_defaults`; "
        + "; ".join(versions) + "). \"—\" means the framework declares no default for it ("
        + no_temperature + " a sampling temperature: it belongs to the rollout engine).",
        "",
        head,
        "|" + "---|" * (len(columns) + 2),
    ]
    for knob, typical in TYPICAL.items():
        cells = " | ".join(c[knob] for c in columns.values())
        lines.append(f"| {knob} | {typical} | {cells} |")

    committed = runs.summaries(runs.SWEEP)
    table = ["| knob | value | greedy accuracy first → last | reward, first → last 10 steps "
             "| KL, last 10 steps | entropy, last 10 | run time (s) |",
             "|---|---|---|---|---|---|---|"]
    panels = {}
    within = True
    for knob, entries in SWEEP.items():
        panel = {}
        for label, name in entries:
            s = committed.get(name)
            if s is None:
                table.append(f"| {knob} | {label} | (not committed) | | | | |")
                within = False
                continue
            ent = [r["entropy"] for r in s["rows"] if "entropy" in r][-10:]
            entropy = fixed(sum(ent) / len(ent)) if ent else "—"
            within &= s["max_s"] <= RUN_BUDGET_S
            table.append(f"| {knob} | [{label}]({rel(s['dir'])}/curves.png) | {s['acc']} | "
                         f"{s['reward']} | {s['kl_last']} | {entropy} | {s['total_s']} |")
            panel[label] = (list(range(len(s["rewards"]))), s["rewards"])
        panels[knob] = panel
    budget = led.holds(f"every sweep run took at most {RUN_BUDGET_S:g} s", within,
                       f"at most {RUN_BUDGET_S:g} s")
    design = _design(led, committed)
    figs["sweep.png"] = lambda path: _figures().sweep_figure(path, panels)
    return "\n".join(lines + [
        "",
        "What moving each one does on the reference loops: one knob at a time from the GRPO loop's "
        f"defaults (PPO's for λ), {design}, each run {budget} on one CPU thread "
        f"({file_link('reports/training/sweep.sh')}). One seed: a difference smaller than the "
        "spread of the three GRPO seeds in the decision tree above is not a finding.",
        "",
        *table,
        "",
        "![Hyperparameter sweep](sheet/sweep.png)",
    ])


def _design(led: Ledger, committed: dict) -> str:
    """The sweep's design, read from its configs and checked: one task and seed, one number of
    completions a step, one number of steps per algorithm."""
    configs = [s["config"] for s in committed.values()]
    if not configs:
        return "(no sweep committed)"
    tasks = {c["task"] for c in configs}
    seeds = {c["seed"] for c in configs}
    completions = {c["prompts_per_step"] * c["group_size"] for c in configs}
    steps = {c["algorithm"]: c["steps"] for c in configs}
    same_steps = all(c["steps"] == steps[c["algorithm"]] for c in configs)
    default = committed.get("grpo-default", {}).get("config", {})
    ok = len(tasks) == 1 and len(seeds) == 1 and len(completions) == 1 and same_steps
    text = (f"on the {next(iter(tasks))} task, seed {next(iter(seeds))}, "
            f"{default.get('prompts_per_step')} prompts of {default.get('group_size')} a step (the "
            f"group-size runs keep the {next(iter(completions))} completions a step), "
            + ", ".join(f"{a.upper()} {n} steps" for a, n in sorted(steps.items())))
    return led.holds("the sweep's runs share task, seed, completions per step and steps", ok,
                     text,
                     f"tasks {tasks}, seeds {seeds}, completions {completions}, steps {steps}")


def _figures():
    from conformance.sheet import figures
    return figures
