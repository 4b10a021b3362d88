"""How long `rlconform certify refimpl` takes, and what the worker isolation costs per check.

Run: ``python benchmarks/certify_speed.py`` (writes ``benchmarks/certify_speed.md``). Speed is
measured here, never asserted in a test. Figures are medians of ``--repeat`` runs, on this
machine, with every function-level check (all kinds but ``training``; not the thorough tier).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from conformance.checks import all_checks
from conformance.runner import WorkerPool, load_adapter, run_check


def in_process(adapter, checks) -> float:
    start = time.perf_counter()
    for c in checks:
        run_check(c, adapter)
    return time.perf_counter() - start


def isolated(checks) -> tuple[float, float]:
    """(worker start-up seconds, seconds for all checks once the worker runs)."""
    pool = WorkerPool("refimpl")
    start = time.perf_counter()
    pool._start()
    startup = time.perf_counter() - start
    start = time.perf_counter()
    for c in checks:
        pool.run(c)
    elapsed = time.perf_counter() - start
    pool.close()
    return startup, elapsed


def cli_wall() -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "conformance.cli", "certify", "refimpl", "--out", out,
                        "-q"], check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = p.parse_args()
    adapter = load_adapter("refimpl")
    checks = all_checks()
    ip = statistics.median(in_process(adapter, checks) for _ in range(args.repeat))
    iso = [isolated(checks) for _ in range(args.repeat)]
    startup = statistics.median(s for s, _ in iso)
    worker = statistics.median(e for _, e in iso)
    wall = statistics.median(cli_wall() for _ in range(args.repeat))
    n = len(checks)
    lines = [
        "# certify speed (refimpl, every function-level check)", "",
        f"{n} checks; {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, Python {platform.python_version()}; median of {args.repeat}.",
        "",
        "| measure | seconds |", "|---|---|",
        f"| `rlconform certify refimpl` wall time (process start, imports, worker, reports) | {wall:.2f} |",
        f"| all checks in-process (no isolation) | {ip:.2f} |",
        f"| all checks in the worker, after it started | {worker:.2f} |",
        f"| worker start-up (spawn, import torch, load adapter) | {startup:.2f} |",
        f"| isolation overhead per check (worker minus in-process, / {n}) | {(worker - ip) / n * 1e3:.2f} ms |",
        "",
        "Target (issue 4): at most 15 s wall on 2 cores.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
