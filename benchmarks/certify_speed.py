"""How long `rlconform certify` takes: refimpl's function-level and training checks, the whole
CLI run, the isolation overhead per check, and (``--variants``) every bundled variant.

Run from the repository root: ``python benchmarks/certify_speed.py [--variants --env
.venv-bench/bin/python ...]`` (writes ``benchmarks/certify_speed.md``). Speed is measured here,
never asserted in a test.

- Function-level checks: every check of the default tier whose kind is not ``training``. Timed
  in-process (``run_check``), in a worker (``WorkerPool``: the worker's start-up apart), and the
  difference per check is the isolation overhead. Medians of ``--repeat``.
- Training checks (kind ``training``, not the ``--slow`` runs): in a fresh worker, after it
  started, the time of each ``pool.run`` call (the first one builds the fixtures' models); one
  run per ``--train-repeat``.
- ``rlconform certify refimpl`` (the default tier: function-level and training checks): wall
  time of the subprocess, process start to reports written; medians of ``--cli-repeat``. The
  function-level part of it is that minus the training checks' worker time (the CLI cannot
  select by kind).
- ``--variants``: every registered adapter but refimpl whose framework loads in this
  environment (``load_adapter``), and those of each ``--env PYTHON`` (this script run there with
  ``--variants-json``): per variant, the function-level checks in one ``WorkerPool`` as
  ``certify`` runs them (parent ``load_adapter``, worker start-up, ``framework_defaults``, every
  check, close); no report writing. ``--only GLOB[,GLOB]`` restricts the variants; the others
  importable there are extrapolated from the measured ones of the same framework.
  ``--variants-json PATH`` in one environment, then ``--variants-from PATH`` (repeatable) here,
  measures the environments one at a time.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from conformance.checks import all_checks
from conformance.runner import (
    AdapterLoadError,
    WorkerPool,
    load_adapter,
    registered_adapters,
    run_check,
)

FUNCTION_BUDGET_S, TRAINING_BUDGET_S, VARIANTS_BUDGET_S = 15.0, 60.0, 360.0


def function_checks() -> list:
    return [c for c in all_checks() if c.kind != "training"]


def training_checks() -> list:
    return [c for c in all_checks() if c.kind == "training"]


def in_process(adapter, checks) -> float:
    start = time.perf_counter()
    for c in checks:
        run_check(c, adapter)
    return time.perf_counter() - start


def isolated(checks, spec: str = "refimpl") -> tuple[float, float, float]:
    """(worker start-up seconds, seconds for all checks once the worker runs, seconds for a
    second pass in the same worker)."""
    pool = WorkerPool(spec)
    start = time.perf_counter()
    pool._start()
    startup = time.perf_counter() - start
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        for c in checks:
            pool.run(c)
        passes.append(time.perf_counter() - start)
    pool.close()
    return startup, passes[0], passes[1]


def training_in_worker(checks) -> dict:
    """Each training check through a fresh refimpl worker: wall seconds per check, and statuses."""
    pool = WorkerPool("refimpl")
    pool._start()
    per, statuses = {}, {}
    try:
        for c in checks:
            start = time.perf_counter()
            row = pool.run(c)
            per[c.id] = time.perf_counter() - start
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    finally:
        pool.close()
    return {"per_check": per, "total": sum(per.values()), "statuses": statuses}


def cli_wall() -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "conformance.cli", "certify", "refimpl", "--out", out,
                        "-q"], check=True, capture_output=True)
        return time.perf_counter() - start


# --- every bundled variant ------------------------------------------------------------------------

def certify_variant(spec: str, checks) -> dict:
    """``spec``'s function-level checks as ``certify`` runs them, without the report writing."""
    start = time.perf_counter()
    load_adapter(spec)                                   # certify loads it in the parent too
    loaded = time.perf_counter()
    pool = WorkerPool(spec)
    try:
        pool._start()
        started = time.perf_counter()
        pool.framework_defaults()
        statuses = {}
        for c in checks:
            status = pool.run(c)["status"]
            statuses[status] = statuses.get(status, 0) + 1
        done = time.perf_counter()
    finally:
        pool.close()
    closed = time.perf_counter()
    return {"variant": spec, "checks": len(checks), "parent_load_s": loaded - start,
            "worker_start_s": started - loaded, "checks_s": done - started,
            "close_s": closed - done,
            "total_s": closed - start, "statuses": statuses,
            "restarts": pool.restarts}


def variants_here(only: str | None) -> dict:
    """Every registered adapter but refimpl that loads here (and matches ``only``), certified."""
    checks = function_checks()
    out = {"python": sys.executable, "torch": torch.__version__, "only": only, "variants": [],
           "not_importable": {}, "skipped": []}
    for spec in sorted(registered_adapters()):
        if spec == "refimpl":
            continue
        try:
            load_adapter(spec)
        except AdapterLoadError as exc:
            out["not_importable"][spec] = str(exc)
            continue
        if only and not any(fnmatch.fnmatchcase(spec, g) for g in only.split(",")):
            out["skipped"].append(spec)
            continue
        print(f"certifying {spec} ...", file=sys.stderr, flush=True)
        out["variants"].append(certify_variant(spec, checks))
    return out


def variants_in(python: str, only: str | None) -> dict:
    """``variants_here`` in another environment (its python running this file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "variants.json"
        cmd = [python, str(Path(__file__).resolve()), "--variants-json", str(path)]
        if only:
            cmd += ["--only", only]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode or not path.exists():
            return {"python": python, "error": (proc.stderr or proc.stdout).strip()[-500:],
                    "variants": [], "not_importable": {}, "skipped": [], "wall_s": wall}
        res = json.loads(path.read_text())
    res["wall_s"] = wall
    return res


# --- the report -----------------------------------------------------------------------------------

def _holds(value: float, budget: float) -> str:
    return f"{'holds' if value <= budget else 'does NOT hold'} ({value:.1f} s of {budget:g} s)"


def render(res: dict) -> str:
    f, t = res["function"], res.get("training")
    n = f["checks"]
    lines = [
        "# certify speed", "",
        f"{res['date']}; {res['machine']}, {res['cores']} cores (shared with other work while "
        f"measured: load average {res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the "
        f"end); torch {res['torch']}, Python {res['python']}; the worker runs 1 torch thread, "
        f"this process {res['threads']}. `python benchmarks/certify_speed.py"
        f"{res['argv']}`; the script's docstring says how each figure is measured.", "",
        f"## refimpl: {n} function-level checks (every kind but `training`), median of "
        f"{res['repeat']}", "",
        "| measure | seconds |", "|---|---|",
        f"| all checks in the worker, after it started (what certify pays) | {f['worker']:.2f} |",
        f"| first worker start-up in a process (starts the fork server, which imports torch "
        f"and the checks; then the fork, which loads the adapter) | "
        f"{f.get('startup_first', f['startup']):.2f} |",
        f"| a later worker start-up, a restart (fork from the running server, load the "
        f"adapter; median) | {f['startup']:.2f} |",
        f"| all checks in-process, 1 thread, after a warm-up pass (no isolation) | "
        f"{f['in_process']:.2f} |",
        f"| all checks in the worker, second pass | {f['worker_warm']:.2f} |",
        f"| isolation overhead per check (worker's second pass minus in-process, / {n}) | "
        f"{(f['worker_warm'] - f['in_process']) / n * 1e3:.2f} ms |",
    ]
    if t:
        per = sorted(t["per_check"].items(), key=lambda kv: -kv[1])
        vals = list(t["per_check"].values())
        repeats = "" if res["train_repeat"] == 1 else f", median of {res['train_repeat']}"
        lines += [
            "", f"## refimpl: {len(vals)} training checks (kind `training`, not `--slow`), in the "
            f"worker{repeats}", "",
            "| measure | seconds |", "|---|---|",
            f"| all training checks, after the worker started | {t['total']:.2f} |",
            f"| per check: median / mean / max | {statistics.median(vals):.2f} / "
            f"{statistics.mean(vals):.2f} / {max(vals):.2f} |",
            "", "Slowest: " + ", ".join(f"`{k}` {v:.2f}" for k, v in per[:5])
            + f". Statuses: {t['statuses']}.",
        ]
    c = res.get("cli")
    if c is not None:
        lines += [
            "", f"## `rlconform certify refimpl` (default tier: {n} function-level + "
            f"{res['n_training']} training checks), median of {res['cli_repeat']}", "",
            "| measure | seconds |", "|---|---|",
            f"| wall time (process start, imports, worker, every check, reports) | {c:.2f} |",
        ]
        if t:
            rest = c - f.get("startup_first", f["startup"]) - f["worker"] - t["total"]
            lines += [f"| of which the training checks (their worker time, above) | "
                      f"{t['total']:.2f} |",
                      f"| of which function-level: wall minus the training checks | "
                      f"{c - t['total']:.2f} |",
                      f"| ... of that, outside the checks and the worker's start-up (the CLI's "
                      f"imports, adapter load, report writing, worker exit) | {rest:.2f} |"]
    v = res.get("variants")
    total = None
    if v:
        part, total = _render_variants(v, n)
        lines += part
    lines += ["", "## Budgets (issue 4; 2 cores)", ""]
    if c is not None and t:
        lines.append(f"- `rlconform certify refimpl`, function-level checks ≤ 15 s: "
                     f"{_holds(c - t['total'], FUNCTION_BUDGET_S)}.")
    elif c is not None:
        lines.append(f"- `rlconform certify refimpl` (everything) ≤ 15 s: "
                     f"{_holds(c, FUNCTION_BUDGET_S)}.")
    if t:
        lines.append(f"- its training checks ≤ 60 s: {_holds(t['total'], TRAINING_BUDGET_S)}.")
    if total is not None:
        note = "; partly extrapolated or incomplete (see above)" if _partial(v) else ""
        lines.append(f"- every variant's function-level certification ≤ 6 min in all: "
                     f"{_holds(total, VARIANTS_BUDGET_S)}{note}.")
    return "\n".join(lines) + "\n"


def _partial(envs: list[dict]) -> bool:
    return any(env.get("skipped") or env.get("error") for env in envs)


def _close(r: dict) -> float:
    """The worker's exit (``pool.close()``); figures written before it was recorded: the rest."""
    return r.get("close_s", r["total_s"] - r["parent_load_s"] - r["worker_start_s"] - r["checks_s"])


def _render_variants(envs: list[dict], n: int) -> tuple[list[str], float]:
    rows, times, missing, skipped = [], {}, set(), set()
    for env in envs:
        name = Path(env["python"]).parent.parent.name
        for r in env["variants"]:
            times[r["variant"]] = r["total_s"]
            st = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
            rows.append(f"| {r['variant']} | `{name}` | {r['worker_start_s']:.1f} | "
                        f"{r['checks_s']:.1f} | {_close(r):.1f} | "
                        f"{r['total_s']:.1f} | {st} |")
        missing |= set(env["not_importable"])
        skipped |= set(env.get("skipped", ()))
        if env.get("error"):
            rows.append(f"| (error in `{name}`) | | | | | | {env['error'][:200]} |")
    runs = "; ".join(f"`{Path(env['python']).parent.parent.name}`"
                     + (f" `--only {env['only']}`" if env.get("only") else "")
                     + (f", {env['wall_s']:.0f} s" if env.get("wall_s") else "")
                     + (f" (load average {env['load'][0]:.1f} to {env['load'][1]:.1f})"
                        if env.get("load") else "") for env in envs)
    total = sum(times.values())
    never, skipped = sorted(missing - set(times) - skipped), sorted(skipped - set(times))
    out = ["", f"## Every bundled variant: function-level checks ({n} each)", "",
           "| variant | environment | worker start-up s | checks s | worker exit s | total s | "
           "statuses |", "|---|---|---|---|---|---|---|", *rows, "",
           f"{len(times)} variants measured, {total:.1f} s in all (per variant: parent "
           "`load_adapter`, worker start-up, `framework_defaults` and every check, the worker's "
           f"exit; no report writing). Environments, one at a time: {runs}. A separate "
           "`rlconform certify VARIANT` process per variant also pays the CLI's own start-up and "
           "report writing each time (refimpl's share above: the row 'outside the checks')."]
    if skipped:
        # the mean of the measured variants of the same framework (else of all measured ones)
        def estimate(spec):
            same = [v for k, v in times.items() if k.split("-")[0] == spec.split("-")[0]]
            return statistics.mean(same or list(times.values()))
        extra = sum(estimate(s) for s in skipped)
        out.append("")
        out.append(f"Not run (`--only`): {', '.join(skipped)}; extrapolated from the measured "
                   f"variants of the same framework: {extra:.1f} s more, "
                   f"{total + extra:.1f} s in all.")
        total += extra
    if never:
        out.append("")
        out.append("Not importable in any environment given: " + ", ".join(never) + ".")
    return out, total


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3, help="function-level repeats (default 3)")
    p.add_argument("--train-repeat", type=int, default=1,
                   help="training-check runs (default 1; 0 skips them)")
    p.add_argument("--cli-repeat", type=int, default=1,
                   help="`rlconform certify refimpl` runs (default 1; 0 skips it)")
    p.add_argument("--variants", action="store_true",
                   help="also certify every bundled variant importable here and in each --env")
    p.add_argument("--env", action="append", default=[], metavar="PYTHON",
                   help="another environment's python for --variants (repeatable)")
    p.add_argument("--only", metavar="GLOB[,GLOB]",
                   help="--variants: only the variants matching one of these globs (the others "
                        "are extrapolated from the measured variants of the same framework)")
    p.add_argument("--variants-json", metavar="PATH",
                   help="only certify the variants importable here and write the figures to PATH "
                        "(JSON), for --variants-from")
    p.add_argument("--variants-from", action="append", default=[], metavar="PATH",
                   help="figures written by --variants-json (in any environment), instead of "
                        "running them again (repeatable; implies --variants)")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = p.parse_args(argv)
    if args.variants_json:                  # the part run in another environment
        start, load = time.perf_counter(), os.getloadavg()[0]
        res = variants_here(args.only)
        res["wall_s"] = time.perf_counter() - start
        res["load"] = (load, os.getloadavg()[0])
        Path(args.variants_json).write_text(json.dumps(res, indent=1))
        print(f"{len(res['variants'])} variants, {res['wall_s']:.1f} s", file=sys.stderr)
        return 0
    argv_text = " ".join(os.path.basename(a) if a.endswith(".json") else a
                         for a in (sys.argv[1:] if argv is None else argv))
    res = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {_cpu()}",
           "cores": os.cpu_count(), "torch": torch.__version__,
           "python": platform.python_version(), "threads": torch.get_num_threads(),
           "repeat": args.repeat, "train_repeat": args.train_repeat,
           "cli_repeat": args.cli_repeat, "argv": f" {argv_text}" if argv_text else "",
           "load": os.getloadavg()[0]}
    adapter = load_adapter("refimpl")
    checks = function_checks()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # as the worker runs
    in_process(adapter, checks)              # warm-up: first calls, lazy imports
    ip = statistics.median(in_process(adapter, checks) for _ in range(args.repeat))
    torch.set_num_threads(threads)
    iso = [isolated(checks) for _ in range(args.repeat)]
    res["function"] = {"checks": len(checks), "in_process": ip,
                       "startup_first": iso[0][0],
                       "startup": statistics.median(s for s, _, _ in iso[1:] or iso),
                       "worker": statistics.median(e for _, e, _ in iso),
                       "worker_warm": statistics.median(w for _, _, w in iso)}
    train = training_checks()
    res["n_training"] = len(train)
    if args.train_repeat > 0:
        runs = [training_in_worker(train) for _ in range(args.train_repeat)]
        res["training"] = {
            "per_check": {c.id: statistics.median(r["per_check"][c.id] for r in runs)
                          for c in train},
            "total": statistics.median(r["total"] for r in runs), "statuses": runs[0]["statuses"]}
    if args.cli_repeat > 0:
        res["cli"] = statistics.median(cli_wall() for _ in range(args.cli_repeat))
    if args.variants_from:
        res["variants"] = [json.loads(Path(f).read_text()) for f in args.variants_from]
    if args.variants:
        res.setdefault("variants", []).extend(
            [variants_here(args.only)] + [variants_in(py, args.only) for py in args.env])
    res["load"] = (res["load"], os.getloadavg()[0])
    md = render(res)
    Path(args.out).write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
