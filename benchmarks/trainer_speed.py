"""One GRPO step of refimpl against TRL's GRPOTrainer, on the training checks' tiny model and batch.

Run (TRL installed, e.g. ``.venv-bench``): ``python -m benchmarks.trainer_speed [--out DIR]``;
writes ``DIR/trainer_speed.md`` and ``DIR/trainer_speed.json`` (default DIR: ``benchmarks/``).
Speed is measured here, never asserted in a test.

What is timed, on one torch thread (``torch.set_num_threads(1)``), wall time (``perf_counter``)
and the thread's CPU time (``time.thread_time``), median [min-max] over ``--repeat`` steps after
``--warmup`` untimed ones, refimpl's and TRL's steps interleaved (the machine is shared):

- ``refimpl train_step``: ``refimpl.train_step(policy, reference, batch, config)`` then
  ``backward()`` (gradients set to None before, untimed): the reference forward, the policy
  forward, the loss, the backward. The models and batch are ``conformance.training``'s: the
  tiny Llama policy and reference, the online batch of 12 rows (54 real completion tokens);
  ``config`` is GRPO's default (``conformance.training.config_for``).
- ``TRL GRPOTrainer step``: the same models, batch and config through
  ``conformance/adapters/trl_train.py`` exactly as the ``trl-grpo`` adapter drives it
  (``loss_type="grpo"``, the recipe's aggregation; generation, rewards and the rollout
  log-probs stubbed), except that the trainer is BUILT ONCE, untimed: the adapter's
  ``_run_steps`` is intercepted during one ``train_step`` call to keep the trainer, then each
  timed step is that same ``_run_steps`` call (``Trainer.training_step``: ``_prepare_inputs`` ->
  ``_generate_and_score_completions`` with the reference forward, the shuffle, ``compute_loss``,
  backward; plus the adapter's copy of the gradients out of ``.grad``). ``trainer._step`` is set
  to 0 (untimed) before each step so that each one scores its batch afresh, as the first step of
  a generation batch does (otherwise TRL reuses the buffered batch on every second call, without
  the reference forward).
- Before timing, both sides' loss and gradients are compared with the training checks'
  measure (``conformance.checks.training.grad_errors``, tolerance ``GRAD_TOL``): with the
  defaults they differ by the ``trl-grpo`` adapter's declared deviations (TRL's KL term is
  importance-weighted, ``use_bias_correction_kl=True``; its advantage eps is 1e-4, a constant),
  so the comparison is repeated with refimpl's ``eps=1e-4`` and TRL's
  ``args.use_bias_correction_kl=False``, where they must agree within the tolerance.
- ``--loop-steps N`` (default 6; 0 skips it), ``--loop-rounds R`` (default 2): R alternating
  runs of N + 1 steps of each implementation's own GRPO loop on
  the ``reverse`` task from the same SFT checkpoint (``refimpl.train.train_run``, i.e.
  ``refimpl/train/grpo.py``; ``trl_train.train_run``, i.e. ``GRPOTrainer.train()``): 32 prompts x
  8 completions per step, generation included, two optimizer steps per batch (GRPO's 2 epochs).
  The per-step wall time is the difference of the rows' ``time_s``; the first step (refimpl:
  with the step-0 greedy evaluation; TRL: with the trainer's construction) is dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _timed(cases: dict, warmup: int, repeat: int) -> dict:
    """Each case ``name: (fn, before)`` ``warmup`` + ``repeat`` times, interleaved (one call of
    each per round, the order alternating, so that both see the same machine load), ``before()``
    untimed ahead of each call; seconds per case."""
    times = {name: ([], []) for name in cases}
    names = list(cases)
    for i in range(warmup + repeat):
        for name in (names if i % 2 == 0 else names[::-1]):
            fn, before = cases[name]
            before()
            w0, c0 = time.perf_counter(), time.thread_time()
            fn()
            c1, w1 = time.thread_time(), time.perf_counter()
            if i >= warmup:
                times[name][0].append(w1 - w0)
                times[name][1].append(c1 - c0)
    return {name: {"wall_s": wall, "cpu_s": cpu, "median_s": statistics.median(wall),
                   "min_s": min(wall), "max_s": max(wall), "cpu_median_s": statistics.median(cpu)}
            for name, (wall, cpu) in times.items()}


def _errors(actual: tuple, expected: tuple) -> dict:
    from conformance.checks.training import GRAD_TOL, grad_errors
    (la, ga), (le, ge) = actual, expected
    name, err, cos = grad_errors(ga, ge)
    lerr = abs(la - le) / max(abs(le), 1e-2)
    return {"worst_parameter": name, "grad_rel_l2": err, "cosine": cos, "loss": la,
            "loss_expected": le, "loss_rel_err": lerr, "within_tol": err <= GRAD_TOL and
            lerr <= GRAD_TOL, "tol": GRAD_TOL}


def step_benchmark(warmup: int, repeat: int) -> dict:
    import refimpl
    from conformance.adapters import trl as trl_adapters
    from conformance.adapters import trl_train as tt
    from conformance.checks.training import recipe_step
    from conformance.training import config_for, fixture, online_batch

    fx = fixture("llama")
    batch = online_batch(fx, "grpo")
    models = fx.models()
    config = config_for("grpo", fx, models)
    tokens = int(batch["completion_mask"].sum())
    prompt_tokens = int(batch["prompt_mask"].sum())

    # (a) refimpl
    policy, reference = models["policy"], models["reference"]

    def zero(model):
        for p in model.parameters():
            p.grad = None

    def ref_step():
        refimpl.train_step(policy, reference, batch, config).backward()

    ref_out = recipe_step(fx, batch, config)     # what the training checks compare against

    # (b) TRL: the adapter's own code path, the trainer built once (untimed)
    adapter = trl_adapters.trl_grpo
    captured, real = {}, tt._run_steps

    def keep(tr, k, micro_inputs):
        captured.update(tr=tr, k=k, micro=micro_inputs)
        return real(tr, k, micro_inputs)

    trl_models = fx.models()
    tt._run_steps = keep
    try:
        t0 = time.perf_counter()
        first = tt.train_step(adapter, trl_models["policy"], trl_models["reference"], batch,
                              dict(config))
        build_and_first_s = time.perf_counter() - t0
    finally:
        tt._run_steps = real
    tr, k, micro = captured["tr"], captured["k"], captured["micro"]

    def trl_step():
        return real(tr, k, micro)

    def rewind():
        tr._step = 0            # score the batch afresh (the first step of a generation batch)

    rewind()
    again = trl_step()

    def as_tuple(out):
        return float(out["loss"]), {n: g.to(torch.float64) for n, g in out["grads"].items()}
    repeat_same = _errors(as_tuple(again), as_tuple(first))["grad_rel_l2"] == 0.0
    default_match = _errors(as_tuple(first), ref_out)
    # the declared deviations switched off: TRL's KL without the importance weight, refimpl's eps
    bias_correction = tr.args.use_bias_correction_kl
    tr.args.use_bias_correction_kl = False
    rewind()
    matched = trl_step()
    tr.args.use_bias_correction_kl = bias_correction
    aligned = _errors(as_tuple(matched), recipe_step(fx, batch, {**config, "eps": 1e-4}))
    inner, training_step = [], tr.training_step

    def timed_training_step(*a, **kw):      # TRL's own part of a timed step, for the notes
        t = time.perf_counter()
        try:
            return training_step(*a, **kw)
        finally:
            inner.append(time.perf_counter() - t)
    tr.training_step = timed_training_step
    rows = _timed({"refimpl train_step": (ref_step, lambda: zero(policy)),
                   "TRL GRPOTrainer step": (trl_step, rewind)}, warmup, repeat)
    del tr.training_step
    per_step = [sum(inner[i * k:(i + 1) * k]) for i in range(warmup, warmup + repeat)]
    rows["TRL GRPOTrainer step"]["training_step_median_s"] = statistics.median(per_step)
    calls_per_step = tr._step                      # training_step calls in one timed step

    for r in rows.values():
        r["tokens_per_s"] = tokens / r["median_s"]
    return {"tokens": tokens, "prompt_tokens": prompt_tokens,
            "rows": int(batch["completion_ids"].shape[0]),
            "config": {k_: v for k_, v in config.items() if not k_.endswith("_path")},
            "trl_loss_type": adapter._loss_type(), "trl_training_step_calls": calls_per_step,
            "trl_build_and_first_step_s": build_and_first_s,
            "trl_repeat_identical": repeat_same,
            "equality_defaults": default_match, "equality_aligned": aligned,
            "declared_llama": adapter.known_deviations.get("grpo/step-matches-recipe-llama"),
            "timings": rows,
            "ratio_tokens_per_s": rows["refimpl train_step"]["tokens_per_s"]
            / rows["TRL GRPOTrainer step"]["tokens_per_s"],
            "ratio_min_wall": rows["TRL GRPOTrainer step"]["min_s"]
            / rows["refimpl train_step"]["min_s"],
            "ratio_median_cpu": rows["TRL GRPOTrainer step"]["cpu_median_s"]
            / rows["refimpl train_step"]["cpu_median_s"]}


def _loop_summary(runs: list[tuple[list[dict], float, float]], length_key: str,
                  group_rows: int) -> dict:
    """Per-step wall times of each run's rows (differences of ``time_s``, step 0 dropped: the
    evaluation or the trainer's construction), pooled over the runs."""
    steps, tokens = [], 0.0
    lengths = []
    for rows, _, _ in runs:
        times = [float(r["time_s"]) for r in rows]
        steps += [b - a for a, b in zip(times, times[1:])]
        lengths += [float(r.get(length_key) or 0.0) for r in rows[1:]]
    tokens = sum(lengths) * group_rows
    return {"steps_timed": len(steps), "step_s": steps, "median_s": statistics.median(steps),
            "min_s": min(steps), "max_s": max(steps), "tokens": tokens,
            "tokens_per_s": tokens / sum(steps), "mean_length": statistics.mean(lengths),
            "reward": [[float(r["reward"]) for r in rows] for rows, _, _ in runs],
            "run_wall_s": [w for _, w, _ in runs], "run_cpu_s": [c for _, _, c in runs]}


def loop_benchmark(steps: int, rounds: int) -> dict:
    from conformance.adapters import trl as trl_adapters
    from conformance.adapters import trl_train as tt
    from refimpl import recipes
    from refimpl.tasks import make_task
    from refimpl.train import train_run
    from refimpl.train.common import sft_policy
    from refimpl.train.grpo import GRPOConfig

    task = make_task("reverse", seed=0)
    t0 = time.perf_counter()
    model_path = str(sft_policy(task, 0))
    sft_s = time.perf_counter() - t0
    config = recipes.default_config("grpo", model_path=model_path, ref_model_path=model_path)
    d = GRPOConfig()
    group_rows = d.prompts_per_step * d.group_size
    loops = {"refimpl": lambda: train_run(model_path, task, dict(config), steps + 1, 0),
             "trl": lambda: tt.train_run(trl_adapters.trl_grpo, model_path, task, dict(config),
                                         steps + 1, 0)}
    runs = {name: [] for name in loops}
    for i in range(rounds):                  # alternating, so both see the same machine load
        for name in (list(loops) if i % 2 == 0 else list(loops)[::-1]):
            c0, w0 = time.thread_time(), time.perf_counter()
            rows = loops[name]()
            runs[name].append((rows, time.perf_counter() - w0, time.thread_time() - c0))
    out = {"task": task.name, "sft_s": sft_s, "steps": steps + 1, "rounds": rounds,
           "batch": f"{d.prompts_per_step} prompts x {d.group_size}", "epochs": d.epochs,
           "refimpl": _loop_summary(runs["refimpl"], "length", group_rows),
           "trl": _loop_summary(runs["trl"], "completions/mean_length", group_rows)}
    out["ratio_tokens_per_s"] = out["refimpl"]["tokens_per_s"] / out["trl"]["tokens_per_s"]
    out["ratio_step_time"] = out["trl"]["median_s"] / out["refimpl"]["median_s"]
    return out


def _ms(r) -> str:
    return f"{r['median_s'] * 1e3:.1f} [{r['min_s'] * 1e3:.1f}–{r['max_s'] * 1e3:.1f}]"


def render(res: dict) -> str:
    s = res["step"]
    t = s["timings"]
    a, b = t["refimpl train_step"], t["TRL GRPOTrainer step"]
    ed, ea = s["equality_defaults"], s["equality_aligned"]
    lines = [
        "# trainer speed: refimpl's GRPO against TRL's GRPOTrainer", "",
        f"{res['date']}; {res['machine']}, {os.cpu_count()} cores shared with other work (load "
        f"average {res['load_start']:.1f} at the start, {res['load_end']:.1f} at the end); "
        f"torch {res['torch']}, transformers "
        f"{res['transformers']}, TRL {res['trl']}, Python {res['python']}; one torch thread; "
        f"median [min–max] of {res['repeat']} after {res['warmup']} warm-up "
        "(`python -m benchmarks.trainer_speed`; the module docstring says what is timed).", "",
        f"## One step: forward + backward of the training checks' batch "
        f"({s['rows']} rows, {s['tokens']} completion tokens, {s['prompt_tokens']} prompt tokens; "
        "tiny Llama; GRPO default config)", "",
        "| implementation | ms per step [min–max] | thread CPU ms | completion tokens/s | "
        "refimpl / TRL tokens/s |",
        "|---|---|---|---|---|",
        f"| refimpl `train_step` + `backward` | {_ms(a)} | {a['cpu_median_s'] * 1e3:.1f} | "
        f"{a['tokens_per_s']:.0f} | {s['ratio_tokens_per_s']:.2f} |",
        f"| TRL {res['trl']} `GRPOTrainer` ({s['trl_training_step_calls']} `training_step`, "
        f"loss_type {s['trl_loss_type']!r}) | {_ms(b)} | {b['cpu_median_s'] * 1e3:.1f} | "
        f"{b['tokens_per_s']:.0f} | 1.00 |",
        "",
        f"Target: refimpl ≥ 1.0× TRL's tokens per second: "
        f"{'holds' if s['ratio_tokens_per_s'] >= 1.0 else 'does NOT hold'} "
        f"({s['ratio_tokens_per_s']:.2f}× on median wall time; {s['ratio_min_wall']:.2f}× on "
        f"the fastest step of each, {s['ratio_median_cpu']:.2f}× on median thread CPU time).", "",
        "Notes:",
        f"- TRL's trainer is built once, untimed (construction plus its first step: "
        f"{s['trl_build_and_first_step_s']:.2f} s; the adapter builds one per `train_step` call). "
        "Each timed TRL step scores the batch afresh (`trainer._step = 0`): reference forward, "
        "policy forward through TRL's fused LM head, loss, backward, and the adapter's copy of the "
        f"gradients (`training_step` itself: {b['training_step_median_s'] * 1e3:.1f} ms of the "
        "median); generation, reward function and rollout log-probs are the adapter's stubs. "
        f"Repeated steps give identical gradients: {s['trl_repeat_identical']}.",
        f"- Same loss and gradients? With the defaults: gradient rel. L2 {ed['grad_rel_l2']:.1e} "
        f"(loss {ed['loss']:.6g} vs {ed['loss_expected']:.6g}), "
        f"{'within' if ed['within_tol'] else 'outside'} the checks' {ed['tol']:g}: the adapter's "
        "declared deviations (TRL's KL term weighted by the ratio, `use_bias_correction_kl`; "
        "its advantage eps 1e-4). With those two aligned (TRL `use_bias_correction_kl=False`, "
        f"refimpl `eps=1e-4`): gradient rel. L2 {ea['grad_rel_l2']:.1e}, loss rel. err "
        f"{ea['loss_rel_err']:.1e}: {'within' if ea['within_tol'] else 'OUTSIDE'} tolerance.",
    ]
    lp = res.get("loop")
    if lp:
        r, q = lp["refimpl"], lp["trl"]
        lines += [
            "", f"## One step of each training loop (generation included): GRPO on "
            f"{lp['task']!r}, {lp['batch']} completions, {lp['epochs']} optimizer steps per batch",
            "",
            "| implementation | ms per step [min–max] | completion tokens/s | mean completion "
            "length | refimpl / TRL tokens/s |", "|---|---|---|---|---|",
            f"| refimpl `refimpl/train/grpo.py` | {_ms(r)} | {r['tokens_per_s']:.0f} | "
            f"{r['mean_length']:.2f} | {lp['ratio_tokens_per_s']:.2f} |",
            f"| TRL `GRPOTrainer.train()` (`trl_train.train_run`) | {_ms(q)} | "
            f"{q['tokens_per_s']:.0f} | {q['mean_length']:.2f} | 1.00 |",
            "",
            f"{lp['rounds']} runs of {lp['steps']} steps of each (alternating), from the same SFT "
            "checkpoint, the first step of each run dropped (refimpl: its step-0 greedy "
            "evaluation; TRL: the trainer's construction), so "
            f"{r['steps_timed']} per-step wall times each (differences of the rows' `time_s`). "
            "Short runs, not full ones: tokens/s uses each side's own mean completion length "
            "(refimpl's logged `length`, TRL's `completions/mean_length`, `<eos>` included in "
            "both). Whole calls, wall / thread CPU s: refimpl "
            + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in zip(r["run_wall_s"], r["run_cpu_s"]))
            + "; TRL " + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in zip(q["run_wall_s"],
                                                                        q["run_cpu_s"])) + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.trainer_speed",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE), help="directory for trainer_speed.md and .json")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--loop-steps", type=int, default=6)
    p.add_argument("--loop-rounds", type=int, default=2)
    args = p.parse_args(argv)
    try:
        import transformers
        import trl
    except ImportError as exc:
        p.exit(2, f"{p.prog}: error: TRL is not importable here ({exc}); use .venv-bench\n")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()      # "Loading weights" bars
    warnings.filterwarnings("ignore", category=FutureWarning)
    res = {"date": date.today().isoformat(),
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
           + f", {_cpu_name()}",
           "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__, "python": platform.python_version(),
           "repeat": args.repeat, "warmup": args.warmup}
    res["load_start"] = os.getloadavg()[0]
    res["step"] = step_benchmark(args.warmup, args.repeat)
    if args.loop_steps > 0:
        res["loop"] = loop_benchmark(args.loop_steps, args.loop_rounds)
    res["load_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trainer_speed.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    md = render(res)
    (out / "trainer_speed.md").write_text(md)
    print(md)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


if __name__ == "__main__":
    sys.exit(main())
