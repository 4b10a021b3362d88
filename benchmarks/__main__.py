"""``python -m benchmarks --out DIR``: time refimpl against every framework's own implementation.

Writes DIR/results.json, DIR/results.md and DIR/results.png (benchmarks/README.md says what is
measured and how). Frameworks that do not import here are timed in their own environment
(``--env``; by default ``.venv-verl`` for verl) and bridged through refimpl's times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks import bridge, cases, harness
from benchmarks.novalidate import novalidate
from benchmarks.peers import PEERS

PROG = "python -m benchmarks"


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line on stderr and exit status 2."""
    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message}\n")


def _names(text: str, known, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or repr(text)}; "
                                         f"expected some of {', '.join(known)}")
    return names


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            B, T = (int(x) for x in part.strip().lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"size {part.strip()!r} is not BxT (e.g. 64x256)") \
                from None
        if B <= 0 or T <= 0:
            raise argparse.ArgumentTypeError(f"size {part.strip()!r}: B and T must be positive")
        out.append((B, T))
    return out


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value
    return parse


def parser(extra_peers=()) -> argparse.ArgumentParser:
    impls = list(harness.BUILTIN) + list(PEERS) + [n for n in extra_peers if n not in PEERS]
    devices = ["cpu", "cuda"]
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="the folder for results.json/md/png")
    p.add_argument("--quick", action="store_true", help="the small sizes (cases.QUICK_SIZES)")
    p.add_argument("--sizes", type=_sizes, help="BxT,BxT,... (default: cases.SIZES)")
    p.add_argument("--functions", type=lambda t: _names(t, cases.FUNCTIONS, "function"),
                   default=list(cases.FUNCTIONS), help="a,b,... (default: every function)")
    p.add_argument("--impls", type=lambda t: _names(t, impls, "implementation"), default=impls,
                   help=f"a,b,... of {', '.join(impls)} (default: all)")
    p.add_argument("--devices", type=lambda t: _names(t, devices, "device"),
                   help="cpu,cuda (default: cpu, and cuda when there is one)")
    p.add_argument("--modes", type=lambda t: _names(t, harness.MODES, "mode"),
                   default=list(harness.MODES), help="fwd,fwd+bwd (default: both)")
    p.add_argument("--seed", type=_positive(int), default=0)
    p.add_argument("--env", action="append", type=Path, default=[], metavar="PYTHON",
                   help="the python of another environment to time the frameworks missing here "
                        "in (repeatable; default: .venv-verl/bin/python for verl when it exists)")
    p.add_argument("--no-combine", action="store_true",
                   help="time in this environment only (what each other environment runs)")
    t = harness.Timing()
    p.add_argument("--warmup", type=_positive(int), default=t.warmup)
    p.add_argument("--min-reps", type=_positive(int), default=t.min_reps)
    p.add_argument("--max-reps", type=_positive(int), default=t.max_reps)
    p.add_argument("--budget", type=_positive(float), default=t.budget_s,
                   help="clock seconds per implementation and case before it stops repeating")
    p.add_argument("--slow", type=_positive(float), default=t.slow_s,
                   help="an implementation whose checked call takes longer (clock seconds) is "
                        "timed once, without warm-up")
    return p


def parse(argv: list[str] | None = None, extra_peers=()) -> argparse.Namespace:
    """The options, checked (``extra_peers``: peer modules given in-process, for tests)."""
    p = parser(extra_peers)
    args = p.parse_args(argv)
    args.sizes = args.sizes or (cases.QUICK_SIZES if args.quick else cases.SIZES)
    args.devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in args.devices and not torch.cuda.is_available():
        p.error("--devices cuda: no CUDA device here")
    if args.max_reps < max(args.min_reps, 1):
        p.error("--max-reps must be at least --min-reps and 1")
    for python in args.env:
        if not python.is_file():
            p.error(f"--env {python}: no such file")
    return args


def _timing(args) -> harness.Timing:
    return harness.Timing(warmup=args.warmup, min_reps=args.min_reps, max_reps=args.max_reps,
                          budget_s=args.budget, slow_s=args.slow)


def measure(args, peer_modules: dict | None = None) -> dict:
    """The run in this environment: results.json's content."""
    names = list(PEERS) + [n for n in (peer_modules or {}) if n not in PEERS]
    peers = harness.load_peers([n for n in names if n in args.impls], peer_modules)
    impls = harness.builtin_impls(args.impls) + peers.impls
    with novalidate() as patched:
        pass
    for fw, why in peers.unavailable.items():
        print(f"benchmarks: {fw} not timed in {harness.env_label()}: {why}", flush=True)
    digest = harness.refimpl_digest()     # the code imported now, before any change to it
    threads = torch.get_num_threads()
    torch.set_num_threads(1)              # all the work on the thread whose CPU time is read
    try:
        rows = harness.run(args.functions, args.sizes, impls, args.devices, args.modes,
                           args.seed, _timing(args), log=lambda line: print(line, flush=True))
        info = harness.harness_info(vars(args), peers, args.devices, _timing(args), patched,
                                     digest)
    finally:
        torch.set_num_threads(threads)
    return {"rows": rows, "harness": info}


def combine_envs(args, results: dict) -> None:
    """Time the frameworks missing here in the other environments and bridge them in."""
    h = results["harness"]
    missing = [fw for fw, why in h["unavailable"][h["env"]].items()
               if not why.startswith("no benchmarks/peers/")]
    envs = args.env or bridge.default_envs(missing)
    for python in envs:
        name = bridge.env_name(python)
        if not missing:
            print(f"benchmarks: nothing left to time in {name}", flush=True)
            continue
        other = bridge.run_env(python, args.out / f"env-{name}", missing, bridge.main_argv(args))
        if "error" in other:
            h["environments"][name] = {"error": other["error"]}
            print(f"benchmarks: {name}: {other['error']}", flush=True)
            continue
        record = bridge.combine(results, other, name)
        timed_there = set(other["harness"].get("versions", {}).get(other["harness"]["env"], {}))
        missing = [fw for fw in missing if fw not in timed_there]
        a, m = record["anchor_scale"], record["memory_ratio"]
        print(f"benchmarks: bridged {', '.join(sorted(timed_there)) or 'nothing'} from {name}: "
              f"anchor scale (refimpl here/there) {a and round(a['median'], 3)} "
              f"[{a and round(a['min'], 3)}, {a and round(a['max'], 3)}], memory-bound here/there "
              f"{m and round(m['median'], 3)} [{m and round(m['min'], 3)}, "
              f"{m and round(m['max'], 3)}]", flush=True)
    harness.add_ratios(results["rows"])


def write(args, results: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print("wrote", path)
    try:
        from benchmarks import report
    except ImportError as e:            # an environment without tabulate/matplotlib: json only
        print(f"benchmarks: results.md not rendered here ({e})")
        return
    for p in report.write(results, args.out):
        print("wrote", p)


def main(argv: list[str] | None = None, peer_modules: dict | None = None) -> int:
    args = parse(argv, tuple(peer_modules or ()))
    results = measure(args, peer_modules)
    if not args.no_combine:
        combine_envs(args, results)
    write(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
