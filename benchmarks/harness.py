"""Time refimpl against the frameworks' own implementations, in one process.

For each function, device, mode ("fwd", and "fwd+bwd" where ``cases.GRAD_ARGS`` names a gradient)
and size, every implementation is called on the same seeded inputs (``cases.make_inputs``):

1. its output is checked against refimpl computed in float64 on the same inputs (the oracle), or
   against the output its entry declares (``Entry.expected``, a declared deviation): an
   implementation that disagrees is reported ``mismatch`` with its error and is not timed, one that
   raises is reported ``error``;
2. it is warmed up, then timed: the implementations take turns (round-robin) until each has
   ``Timing.budget_s`` of CPU time or ``Timing.max_reps`` calls (at least ``Timing.min_reps``).

The clock on the CPU is the CPU time of the calling thread (``time.thread_time``) with torch
limited to one thread, so all the work happens on the thread being timed and a stall of the
machine (another process holding the core) does not count; the wall time is recorded beside it
to show how busy the machine was. On CUDA the clock is the wall time between two synchronizations.

Implementations: ``refimpl``, ``refimpl-novalidate`` (refimpl with ``refimpl._checks`` patched to
pass-throughs, ``benchmarks.novalidate``), ``memory-bound`` (one read and one write of the same
tensors: a copy of every input into a preallocated buffer; under fwd+bwd also one write of a
buffer of each differentiated input's size) and each framework of ``benchmarks.peers``.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import importlib
import importlib.metadata
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import torch

import refimpl
from benchmarks import cases
from benchmarks.novalidate import novalidate
from benchmarks.peers import PEERS, Entry

__all__ = ["Impl", "Timing", "TOLERANCE", "CLOCK", "BUILTIN", "builtin_impls", "load_peers",
           "relative_error", "run", "run_case", "refimpl_digest", "harness_info", "case_sizes",
           "modes_for", "add_ratios", "env_label"]

#: the check before timing: ||out - oracle|| / max(||oracle||, TINY) <= TOLERANCE, per output
TOLERANCE = 1e-4
TINY = 1e-30
CLOCK = {"cpu": "thread CPU time, 1 torch thread", "cuda": "wall time between synchronizations"}
BUILTIN = ("refimpl", "refimpl-novalidate", "memory-bound")
MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Timing:
    """How many times each implementation is called (the defaults of the CLI)."""
    warmup: int = 2          # untimed calls after the checked one
    min_reps: int = 3
    max_reps: int = 30
    budget_s: float = 0.3    # stop once an implementation has this much clock time (and min_reps)
    #: an implementation whose checked call took longer than this many seconds of clock gets no
    #: warm-up and one timed call (one of OpenRLHF's backward passes takes a minute at 2^20
    #: tokens: min_reps of them would hold the run for many minutes and tell nothing more)
    slow_s: float = 5.0


@dataclass
class Impl:
    """One implementation: how to call it per function (``Entry``, as in ``benchmarks.peers``)."""
    name: str
    entries: dict[str, Entry]
    #: entered around each call (untimed): refimpl-novalidate's patch
    context: Callable[[], ContextManager] = nullcontext
    #: the memory-bound pass: no output to check, no backward (its call writes the gradients)
    memory_bound: bool = False
    framework: bool = False
    skipped: dict[str, str] = field(default_factory=dict)


# --- the implementations --------------------------------------------------------------------


def _refimpl_entry(function: str) -> Entry:
    fn = getattr(refimpl, function)
    return Entry(prepare=lambda kw: (lambda: fn(**kw)), source=f"refimpl.{function}")


def _memory_pass(function: str) -> Callable[[dict], Callable[[], None]]:
    """kw -> a call that copies every tensor input into a preallocated buffer of its own (one read
    and one write of the same tensors); where the inputs require a gradient (fwd+bwd) it also
    writes one buffer of the size of each differentiated input (the gradient)."""
    def prepare(kw: dict) -> Callable[[], None]:
        tensors = [v.detach() for v in kw.values() if isinstance(v, torch.Tensor)]
        pairs = [(torch.empty_like(t), t) for t in tensors]
        grads = [torch.empty_like(kw[n].detach()) for n in cases.GRAD_ARGS.get(function, ())
                 if kw[n].requires_grad]

        def call() -> None:
            for buffer, tensor in pairs:
                buffer.copy_(tensor)
            for buffer in grads:
                buffer.fill_(1.0)
        return call
    return prepare


def builtin_impls(names: Iterable[str] = BUILTIN) -> list[Impl]:
    """refimpl, refimpl-novalidate and memory-bound (those of ``names``)."""
    ref = {f: _refimpl_entry(f) for f in cases.FUNCTIONS}
    made = {"refimpl": Impl("refimpl", ref),
            "refimpl-novalidate": Impl("refimpl-novalidate", ref, context=novalidate),
            "memory-bound": Impl("memory-bound", {
                f: Entry(prepare=_memory_pass(f), source="buffer.copy_(tensor), every tensor input")
                for f in cases.FUNCTIONS}, memory_bound=True)}
    return [made[n] for n in BUILTIN if n in names]


@dataclass
class PeerLoad:
    impls: list[Impl]
    unavailable: dict[str, str]      # framework -> why it is not timed here
    versions: dict[str, str]         # framework -> installed version
    entries: list[dict]              # what each framework entry calls (source, deviation)


def load_peers(names: Iterable[str] = PEERS, modules: dict[str, Any] | None = None) -> PeerLoad:
    """Import ``benchmarks.peers.<framework>`` for each name (or take it from ``modules``, for
    tests) and keep those whose framework imports here."""
    load = PeerLoad([], {}, {}, [])
    for name in names:
        module = (modules or {}).get(name)
        if module is None:
            if importlib.util.find_spec(f"benchmarks.peers.{name}") is None:
                load.unavailable[name] = f"no benchmarks/peers/{name}.py"
                continue
            try:
                module = importlib.import_module(f"benchmarks.peers.{name}")
            except Exception as e:                        # noqa: BLE001 (reported, not fatal)
                load.unavailable[name] = f"benchmarks/peers/{name}.py failed to import: {e!r}"
                continue
        try:
            if not module.available():
                load.unavailable[name] = "the framework does not import in this environment"
                continue
            entries = dict(module.entries())
        except Exception as e:                            # noqa: BLE001
            load.unavailable[name] = f"entries() failed: {e!r}"
            continue
        load.impls.append(Impl(name, entries, framework=True, skipped=dict(module.SKIPPED)))
        load.versions[name] = _version(getattr(module, "FRAMEWORK", name))
        load.entries += [{"framework": name, "function": f, "source": e.source,
                          "deviation": e.deviation, "grad": e.grad} for f, e in entries.items()]
    return load


def _version(framework: str) -> str:
    try:
        from conformance.adapters.pins import DISTRIBUTIONS
        return importlib.metadata.version(DISTRIBUTIONS.get(framework, framework))
    except Exception:                                     # noqa: BLE001
        return "unknown"


# --- sizes and modes ------------------------------------------------------------------------


def case_sizes(function: str, sizes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The sizes ``function`` is timed at: ``cases.sizes_for``, once per B for the functions that
    take B only (group estimators, preference losses: their T is not used)."""
    out, seen = [], set()
    for B, T in cases.sizes_for(function, sizes):
        x = cases.elements(function, B, T)
        if x not in seen:
            seen.add(x)
            out.append((B, T))
    return out


def modes_for(function: str, modes: Iterable[str] = MODES) -> list[str]:
    return [m for m in modes if m == "fwd" or function in cases.GRAD_ARGS]


# --- checking -------------------------------------------------------------------------------


def _outputs(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def relative_error(out: Any, ref: Any) -> float:
    """The largest ``||out - ref|| / max(||ref||, TINY)`` over the outputs (a tuple's elements);
    inf where the number of outputs, a shape, or finiteness differs."""
    outs, refs = _outputs(out), _outputs(ref)
    if len(outs) != len(refs):
        return math.inf
    worst = 0.0
    for o, r in zip(outs, refs):
        o = torch.as_tensor(o).detach().to("cpu", torch.float64)
        r = torch.as_tensor(r).detach().to("cpu", torch.float64)
        if o.shape != r.shape:
            return math.inf
        err = float(torch.linalg.vector_norm(o - r)) / max(float(torch.linalg.vector_norm(r)), TINY)
        worst = max(worst, err if err == err else math.inf)
    return worst


def _float64(kw: dict) -> dict:
    return {k: (v.detach().to("cpu", torch.float64)
                if isinstance(v, torch.Tensor) and v.is_floating_point() else
                v.to("cpu") if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _expected(entry: Entry, kw: dict) -> Any:
    """A declared deviation's output: computed on the inputs in float64 where it can be, else on
    the float32 ones (an ``expected`` written for float32 only)."""
    with torch.no_grad():
        try:
            return entry.expected(_float64(kw))
        except Exception:                                 # noqa: BLE001
            return entry.expected({k: (v.detach() if isinstance(v, torch.Tensor) else v)
                                   for k, v in kw.items()})


def _first(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


# --- timing ---------------------------------------------------------------------------------


def _measure(fn: Callable[[], Any], device: str) -> tuple[float, float]:
    """(clock seconds, wall seconds) of one call, with the garbage collector off."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        if device == "cuda":
            torch.cuda.synchronize()
            w0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            wall = time.perf_counter() - w0
            return wall, wall
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        w1, c1 = time.perf_counter(), time.thread_time()
        return c1 - c0, w1 - w0
    finally:
        if gc_was_on:
            gc.enable()


@dataclass
class _Contender:
    """One implementation prepared on one case."""
    impl: Impl
    call: Callable[[], Any]          # the prepared zero-argument call of the entry
    backward: bool
    leaves: list[torch.Tensor]
    samples: list[tuple[float, float]] = field(default_factory=list)
    rel_error: float | None = None
    first_s: float = 0.0             # clock seconds of the checked call

    def reset(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None

    def step(self) -> Any:
        out = self.call()
        if self.backward:
            _first(out).sum().backward()
        return out

    def timed(self, device: str) -> None:
        self.reset()
        with self.impl.context():
            self.samples.append(_measure(self.step, device))

    def done(self, timing: Timing) -> bool:
        n = len(self.samples)
        if self.first_s > timing.slow_s:
            return n >= 1
        return n >= timing.max_reps or (n >= timing.min_reps and
                                        sum(c for c, _ in self.samples) >= timing.budget_s)


def _round_robin(contenders: list[_Contender], device: str, timing: Timing) -> None:
    for c in contenders:
        for _ in range(0 if c.first_s > timing.slow_s else timing.warmup):
            c.reset()
            with c.impl.context():
                c.step()
    active = list(contenders)
    while active:
        for c in list(active):
            c.timed(device)
            if c.done(timing):
                active.remove(c)


# --- one case -------------------------------------------------------------------------------


def _row(function, impl, device, mode, B, T, env, **more) -> dict:
    return {"function": function, "impl": impl, "device": device, "mode": mode, "B": B, "T": T,
            "elements": cases.elements(function, B, T), "env": env, "bridged": False,
            "median_s": None, "min_s": None, "max_s": None, **more}


def _stats(samples: list[tuple[float, float]]) -> dict:
    clock = [c for c, _ in samples]
    wall = [w for _, w in samples]
    return {"median_s": statistics.median(clock), "min_s": min(clock), "max_s": max(clock),
            "wall_median_s": statistics.median(wall), "wall_min_s": min(wall),
            "wall_max_s": max(wall), "reps": len(samples)}


def _prepare(impl: Impl, function: str, mode: str, kw: dict, oracle: Any,
             row: Callable[..., dict]) -> _Contender | dict:
    """Prepare ``impl`` on the case and check its output: a contender to time, or the row of an
    implementation that is not timed (mismatch or error)."""
    entry = impl.entries[function]
    leaves = [kw[n] for n in cases.GRAD_ARGS.get(function, ())] if mode == "fwd+bwd" else []
    try:
        contender = _Contender(impl, entry.prepare(kw), mode == "fwd+bwd" and not impl.memory_bound,
                               leaves)
        with impl.context():
            start = time.thread_time()
            out = contender.step()           # the checked call is the first warm-up call
            contender.first_s = time.thread_time() - start
        if impl.memory_bound:
            return contender
        got = entry.canonical(out, kw)
        want = oracle if entry.expected is None else _expected(entry, kw)
        err = relative_error(got, want)
    except Exception as e:                                # noqa: BLE001 (reported, keep going)
        return row(status="error", note=f"{type(e).__name__}: {e}"[:500])
    if not err <= TOLERANCE:
        against = "its declared deviation" if entry.expected is not None else "refimpl (float64)"
        return row(status="mismatch", rel_error=err,
                   note=f"relative error {err:.3g} against {against} > {TOLERANCE:g}; not timed")
    contender.rel_error = err
    return contender


def run_case(function: str, device: str, mode: str, B: int, T: int, impls: list[Impl],
             oracle: Any, seed: int, timing: Timing, env: str) -> list[dict]:
    """Check then time every implementation of ``impls`` that has ``function`` on one case."""
    kw = cases.make_inputs(function, B, T, seed=seed, grad=(mode == "fwd+bwd"), device=device)
    rows, contenders = [], []
    for impl in impls:
        if function not in impl.entries or (mode == "fwd+bwd" and not impl.entries[function].grad):
            continue
        row = functools.partial(_row, function, impl.name, device, mode, B, T, env)
        got = _prepare(impl, function, mode, kw, oracle, row)
        if isinstance(got, dict):
            rows.append(got)
        else:
            contenders.append(got)
    _round_robin(contenders, device, timing)
    for c in contenders:
        rows.append(_row(function, c.impl.name, device, mode, B, T, env, status="ok",
                         rel_error=c.rel_error, **_stats(c.samples)))
    return rows


def _oracle(function: str, B: int, T: int, seed: int) -> Any:
    """refimpl on the case's inputs in float64 (CPU), the output every implementation is checked
    against."""
    kw = _float64(cases.make_inputs(function, B, T, seed=seed))
    with torch.no_grad():
        return getattr(refimpl, function)(**kw)


# --- the sweep ------------------------------------------------------------------------------


def env_label() -> str:
    """A name for the running environment: its directory (``.venv-bench`` -> ``venv-bench``)."""
    return os.path.basename(os.path.normpath(sys.prefix)).lstrip(".") or "python"


def add_ratios(rows: list[dict]) -> None:
    """Per case: ``ratio_fastest`` (median / the fastest implementation's, memory-bound aside)
    and ``ratio_memory`` (median / the memory-bound pass's)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["function"], r["device"], r["mode"], r["B"], r["T"]), []).append(r)
    for group in groups.values():
        timed = [r for r in group if r.get("status") == "ok" and r["median_s"] is not None]
        impls = [r["median_s"] for r in timed if r["impl"] != "memory-bound"]
        memory = [r["median_s"] for r in timed if r["impl"] == "memory-bound"]
        fastest = min(impls) if impls else None
        for r in group:
            ok = r in timed
            r["ratio_fastest"] = (r["median_s"] / fastest if ok and fastest
                                  and r["impl"] != "memory-bound" else None)
            r["ratio_memory"] = r["median_s"] / memory[0] if ok and memory and memory[0] else None


def _describe(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        if r.get("status") != "ok":
            parts.append(f"{r['impl']} {r['status'].upper()}")
            continue
        cpu_spread = r["max_s"] / r["min_s"] if r["min_s"] else math.inf
        wall_spread = r["wall_max_s"] / r["wall_min_s"] if r["wall_min_s"] else math.inf
        parts.append(f"{r['impl']} {r['median_s'] * 1e3:.3g} ms (spread {cpu_spread:.2g}x, "
                     f"wall {wall_spread:.2g}x, n={r['reps']})")
    return "; ".join(parts)


def run(functions: list[str], sizes: list[tuple[int, int]], impls: list[Impl],
        devices: list[str] = ("cpu",), modes: Iterable[str] = MODES, seed: int = 0,
        timing: Timing = Timing(), log: Callable[[str], None] = print,
        env: str | None = None) -> list[dict]:
    """Every case of the sweep; returns the rows (with ratios)."""
    env = env or env_label()
    rows: list[dict] = []
    for function in functions:
        for B, T in case_sizes(function, sizes):
            oracle = None
            if any(function in i.entries and not i.memory_bound for i in impls):
                oracle = _oracle(function, B, T, seed)
            for device in devices:
                for mode in modes_for(function, modes):
                    got = run_case(function, device, mode, B, T, impls, oracle, seed, timing, env)
                    log(f"{function} {device} {mode} {B}x{T}: {_describe(got)}")
                    rows += got
            del oracle
    add_ratios(rows)
    return rows


def refimpl_digest() -> str:
    """sha256 of refimpl's top-level sources: the anchor is the same code in two runs only when
    this agrees (refimpl may change between the main run and another environment's)."""
    digest = hashlib.sha256()
    for path in sorted(Path(refimpl.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def harness_info(args: dict, peers: PeerLoad, devices: list[str], timing: Timing,
                 novalidate_patch: list[str], digest: str) -> dict:
    """The run's metadata (results.json's ``harness``)."""
    torch_threads = torch.get_num_threads()
    return {
        "refimpl_digest": digest,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": env_label(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": torch_threads,
        "devices": list(devices),
        "clock": {d: CLOCK[d] for d in devices},
        "figure": "median, min and max of the clock over the timed calls (wall time beside it)",
        "tolerance": {"rel_error": TOLERANCE, "norm": "||out - ref|| / max(||ref||, 1e-30), "
                      "per output, against refimpl in float64 on the same inputs (or the "
                      "entry's declared deviation)"},
        "timing": {"warmup": timing.warmup, "min_reps": timing.min_reps,
                   "max_reps": timing.max_reps, "budget_s": timing.budget_s,
                   "slow_s": timing.slow_s, "order": "round-robin over the implementations of each case",
                   "gc": "disabled during each timed call"},
        "memory_bound": "one read and one write of the same tensors: buffer.copy_(tensor) for "
                        "every tensor input; fwd+bwd also writes one buffer per differentiated "
                        "input",
        "sizes": [list(s) for s in args["sizes"]],
        "functions": list(args["functions"]),
        "impls": list(args["impls"]),
        "seed": args["seed"],
        "versions": {env_label(): dict(peers.versions)},
        "unavailable": {env_label(): dict(peers.unavailable)},
        "skipped": [{"framework": i.name, "function": f, "reason": why, "env": env_label()}
                    for i in peers.impls for f, why in i.skipped.items()
                    if f in args["functions"]],
        "entries": [dict(e, env=env_label()) for e in peers.entries
                    if e["function"] in args["functions"]],
        "novalidate_patch": novalidate_patch,
        "environments": {},
        "anchor_drift": {},
    }
