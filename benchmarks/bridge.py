"""Frameworks that cannot share the main environment, timed in their own and bridged.

``rlconform setup bench`` installs every framework that can share one environment; verl and
OpenRLHF cannot and have their own (``.venv-verl``, ``.venv-openrlhf``). Such an environment runs
``python -m benchmarks --no-combine`` on the same functions, sizes, seed and modes with only
``refimpl``, ``memory-bound`` and the frameworks missing from the main run, writing
``DIR/env-<name>/results.json``. Its framework rows are then put on the main run's scale through
the shared anchor, refimpl (same code, same inputs, same seed, in both runs):

    time_bridged = time_there * median over the cases of (refimpl median here / refimpl median there)

one scale per environment (median, min and max alike; see README.md). The memory-bound pass, timed in
both runs too, checks the bridge: its ratio between the runs should be close to the anchor's.
Bridged rows carry ``env`` (the other environment), ``bridged: true``, ``anchor_scale`` and the
times measured there (``raw_median_s``, ...).
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

__all__ = ["ANCHOR", "CHECK", "default_envs", "env_name", "run_env", "combine"]

ANCHOR = "refimpl"
CHECK = "memory-bound"
ROOT = Path(__file__).resolve().parents[1]
_OWN = ("refimpl", "refimpl-novalidate", "memory-bound")


def _key(row: dict) -> tuple:
    return (row["function"], row["device"], row["mode"], row["B"], row["T"])


def env_name(python: str | Path) -> str:
    """``/work/main/.venv-verl/bin/python`` -> ``venv-verl`` (the environment's directory)."""
    p = Path(python)
    base = p.parent.parent if p.parent.name in ("bin", "Scripts") else p.parent
    return base.name.lstrip(".") or "env"


def default_envs(missing: list[str]) -> list[Path]:
    """The extra environments to run when none is named: for each framework that does not run
    here, its own environment ``.venv-<framework>`` beside the project, where one exists (the
    layout ``.ci/certify_frameworks.sh`` makes: verl and OpenRLHF cannot share ``rlconform
    setup bench``'s environment)."""
    found = [ROOT / f".venv-{fw}" / "bin" / "python" for fw in missing]
    return [p for p in found if p.exists()]


def run_env(python: Path, out: Path, frameworks: list[str], argv: list[str]) -> dict:
    """Run the benchmark in another environment on ``frameworks`` (plus the anchor and the check);
    ``argv`` carries the sizes, functions, seed, devices and timing of the main run. Returns its
    results (``{}`` with an ``error`` where it failed)."""
    cmd = [str(python), "-m", "benchmarks", "--out", str(out), "--no-combine",
           "--impls", ",".join([ANCHOR, CHECK, *frameworks]), *argv]
    print("benchmarks: in", env_name(python), ":", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT)
    path = out / "results.json"
    if proc.returncode != 0 or not path.exists():
        return {"error": f"{' '.join(cmd)} exited with {proc.returncode}"}
    return json.loads(path.read_text())


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def combine(main: dict, other: dict, env: str) -> dict:
    """Add ``other``'s framework rows to ``main`` (in place), bridged through the anchor; returns
    the bridge's record (also stored in ``main["harness"]["anchor_drift"][env]``)."""
    def timed(results: dict, impl: str) -> dict:
        return {_key(r): r for r in results["rows"]
                if r["impl"] == impl and r.get("status") == "ok" and r["median_s"]}

    anchor_here, anchor_there = timed(main, ANCHOR), timed(other, ANCHOR)
    check_here, check_there = timed(main, CHECK), timed(other, CHECK)
    cases = []
    for key in sorted(set(anchor_here) & set(anchor_there), key=str):
        scale = anchor_here[key]["median_s"] / anchor_there[key]["median_s"]
        memory = (check_here[key]["median_s"] / check_there[key]["median_s"]
                  if key in check_here and key in check_there else None)
        cases.append(dict(zip(("function", "device", "mode", "B", "T"), key),
                          anchor_scale=scale, memory_ratio=memory))
    # one scale for the whole environment: the median of the per-case ratios. A per-case ratio
    # of two noisy sub-millisecond medians moved between 0.3 and 4 on this machine while its
    # median stayed near 1; the per-case ratios are kept in the record as the bridge's spread.
    overall = statistics.median(c["anchor_scale"] for c in cases) if cases else None
    scales = {(c["function"], c["device"], c["mode"], c["B"], c["T"]): overall for c in cases}

    for row in other["rows"]:
        if row["impl"] in _OWN:
            continue
        row = dict(row, env=env, bridged=True)
        scale = scales.get(_key(row))
        if row.get("status") == "ok":
            if scale is None:
                row.update(status="unbridged", median_s=None, min_s=None, max_s=None,
                           note=f"no {ANCHOR} time in both runs for this case")
            else:
                row.update({f"raw_{k}": row[k] for k in ("median_s", "min_s", "max_s")},
                           anchor_scale=scale,
                           **{k: row[k] * scale for k in ("median_s", "min_s", "max_s")})
        main["rows"].append(row)

    h, oh = main["harness"], other.get("harness", {})
    record = {"cases": cases,
              "same_refimpl": h.get("refimpl_digest") == oh.get("refimpl_digest"),
              "scale": overall,
              "anchor_scale": _spread([c["anchor_scale"] for c in cases]),
              "memory_ratio": _spread([c["memory_ratio"] for c in cases
                                       if c["memory_ratio"] is not None])}
    h.setdefault("anchor_drift", {})[env] = record
    h.setdefault("environments", {})[env] = {k: oh.get(k) for k in
                                             ("python", "torch", "platform", "threads", "date")}
    for key in ("versions", "unavailable"):
        h.setdefault(key, {}).update(oh.get(key, {}))
    h.setdefault("skipped", []).extend(oh.get("skipped", []))
    h.setdefault("entries", []).extend(oh.get("entries", []))
    return record


def main_argv(args) -> list[str]:
    """The options of the main run that the other environments must share."""
    argv = ["--sizes", ",".join(f"{B}x{T}" for B, T in args.sizes),
            "--functions", ",".join(args.functions), "--seed", str(args.seed),
            "--devices", ",".join(args.devices), "--modes", ",".join(args.modes),
            "--warmup", str(args.warmup), "--min-reps", str(args.min_reps),
            "--max-reps", str(args.max_reps), "--budget", str(args.budget),
            "--slow", str(args.slow)]
    return argv

