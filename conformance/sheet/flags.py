"""The red flags: each one's diagnostic in the reference loops, its threshold, and the committed
run built to make it fire (a preset of ``rlconform train``), against a default run where it stays
silent. Read from ``reports/training/``; never re-run."""

from __future__ import annotations

import statistics

from conformance.sheet import runs
from conformance.sheet.common import code_link, rel
from conformance.sheet.ledger import Ledger, fixed


#: every flag a loop writes, by the name the page gives it
FLAGS = {"KL explosion": "flag_kl_explosion", "mode collapse": "flag_mode_collapse",
         "degenerate groups": "flag_degenerate_groups", "reward hacking": "flag_reward_hacking"}


def _fired(s: dict, flag: str) -> list[int]:
    return [r["step"] for r in s["rows"] if r.get(flag)]


def _first_last(s: dict, key: str, k: int = 10) -> str:
    xs = [r[key] for r in s["rows"] if key in r and "loss" in r]
    if not xs:
        return "—"
    return f"{fixed(statistics.fmean(xs[:k]))} → {fixed(statistics.fmean(xs[-k:]))}"


def section(led: Ledger, figs: dict) -> str:
    led.section = "Red flags"
    from refimpl.train import PRESETS, common
    committed = runs.summaries()
    rows = []
    spec = [
        ("Reward hacking", "flag_reward_hacking", "reward-hacking", "ppo_rm",
         code_link(common.reward_hacking, "reward_hacking"),
         f"proxy reward up by ≥ {common.HACK_PROXY_RISE:g} while the rule-based reward falls by "
         f"≥ {common.HACK_TRUE_FALL:g} (first 10 steps against the last 10)",
         [("proxy_reward", "proxy reward"), ("true_reward", "rule-based reward")]),
        ("Mode collapse", "flag_mode_collapse", "mode-collapse", "grpo",
         code_link(common.red_flags, "red_flags"),
         f"token entropy < {common.COLLAPSE_ENTROPY:g} nats or distinct completions per group "
         f"< {common.COLLAPSE_DISTINCT:g}",
         [("entropy", "entropy"), ("distinct", "distinct")]),
        ("KL explosion", "flag_kl_explosion", "kl-explosion", "grpo",
         code_link(common.red_flags, "red_flags"),
         f"KL to the reference > {common.KL_EXPLOSION:g} nats per sequence",
         [("kl", "KL")]),
        ("Degenerate groups", "flag_degenerate_groups", "degenerate-groups", "grpo",
         code_link(common.red_flags, "red_flags"),
         f"share of groups whose rewards are all equal > {common.DEGENERATE:g}",
         [("degenerate", "degenerate share")]),
    ]
    for name, flag, trigger, control, fn, rule, shown in spec:
        s, c = committed.get(trigger), committed.get(control)
        if s is None or c is None:
            rows.append(f"| {name} | {fn} | {rule} | (run not committed) | | |")
            led.holds(f"{name}: runs committed", False, "missing")
            continue
        fired, quiet = _fired(s, flag), _fired(c, flag)
        when = f"from step {fired[0]}, {len(fired)} of {s['steps']} steps" if fired else ""
        cell = led.holds(f"{name} fires on {trigger}", bool(fired), when, f"{len(fired)} steps")
        ctl = led.holds(f"{name} silent on {control}", not quiet,
                        f"{len(quiet)} of {c['steps']} steps", f"{len(quiet)} steps")
        figures = "; ".join(f"{label} {_first_last(s, key)}" for key, label in shown)
        others = [f"{other} (from step {_fired(s, f)[0]})" for other, f in FLAGS.items()
                  if f != flag and _fired(s, f)]
        if others:
            figures += "; also fired: " + ", ".join(others)
        preset = PRESETS.get(trigger, (None, {}, ""))
        rows.append(f"| {name} | {fn} | {rule} | [{trigger}]({rel(s['dir'])}/curves.png): "
                    f"{preset[2]} | {cell}; {figures} | [{control}]({rel(c['dir'])}/curves.png): "
                    f"{ctl} |")
    grpo, ppo = committed.get("credit-grpo"), committed.get("credit-ppo")
    credit = ""
    if grpo and ppo:
        share = lambda s, k: statistics.fmean(  # noqa: E731
            [r[k] for r in s["rows"] if k in r][-10:])
        g, p = share(grpo, "credit_share"), share(ppo, "credit_share")
        proc = share(grpo, "credit_share_process")
        more = led.holds("PPO's critic puts more advantage on the deciding token than GRPO",
                         p > g, f"{fixed(p)} against {fixed(g)}")
        credit = (
            "**Credit assignment.** Diagnostic "
            f"{code_link(common.credit_share, 'credit_share')}: the share of the advantage mass "
            "Σ_t∣A_t∣ that sits on the one token deciding the reward, on the `decisive` task "
            "(a completion of 4 digits and EOS, only the third digit scored). A sequence-level "
            "advantage spreads evenly, 1/5 = 0.2 of it on each of the 5 tokens; a critic can learn "
            "where the reward comes from; a process reward puts all of it there. Over the last 10 "
            f"steps of the committed runs, PPO's GAE advantages put {more} (GRPO, one advantage "
            f"per sequence) on the deciding token ([credit-ppo]({rel(ppo['dir'])}/curves.png), "
            f"[credit-grpo]({rel(grpo['dir'])}/curves.png)), and the task's process reward puts "
            f"{led.value('process reward credit share', proc, 1.0, 1e-9, 3)} there. Greedy "
            f"accuracy went {grpo['acc']} (GRPO) and {ppo['acc']} (PPO): on an answer this "
            "short the even spread does not stop learning, and only the diagnostic tells the two "
            "apart.")
    return "\n".join([
        "## Red flags",
        "",
        "Each online loop computes these figures every step and writes a flag beside them "
        f"({code_link(common.red_flags, 'refimpl.train.common.red_flags')}; thresholds are "
        "constants of that module, measured against healthy runs). Each flag has a run built to "
        "make it fire (`rlconform train ALGO --preset NAME`) and a default run where it must not.",
        "",
        "| red flag | diagnostic | fires when | run built to trigger it | fired "
        "| default run: fired |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        credit,
    ])
