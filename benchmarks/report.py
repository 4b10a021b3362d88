"""results.md and results.png, rendered from results.json alone.

    python -m benchmarks.report DIR/results.json     # re-renders DIR/results.md and DIR/results.png

``render(results)`` gives the Markdown; ``plot(results, path)`` draws one log-log panel per function
(time against the elements of one call, ``cases.elements``), one line per implementation, solid
for the forward pass and dashed for forward+backward.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

__all__ = ["render", "plot", "write", "main"]

_FIRST = ("refimpl", "refimpl-novalidate")
_LAST = ("memory-bound",)
_OWN = _FIRST + _LAST
#: a bridged case is flagged when its anchor scale and memory-bound ratio are this far apart
_BRIDGE_OFF = 1.5


# --- helpers --------------------------------------------------------------------------------


def _order(impls) -> list[str]:
    impls = set(impls)
    middle = sorted(impls - set(_OWN))
    return [i for i in _FIRST if i in impls] + middle + [i for i in _LAST if i in impls]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms >= 0.01 else f"{ms:.2g}"


def _size(row: dict) -> str:
    return f"B={row['B']}" if row.get("elements") == row["B"] else f"{row['B']}×{row['T']}"


def _ok(row: dict | None) -> bool:
    return bool(row) and row.get("status") == "ok" and row.get("median_s") is not None


def _cell(row: dict | None, fastest: bool) -> str:
    if row is None:
        return ""
    if not _ok(row):
        status = row.get("status", "?")
        err = row.get("rel_error")
        return f"{status} ({err:.1g})" if status == "mismatch" and err is not None else status
    time = _ms(row["median_s"])
    time = f"**{time}**" if fastest else time
    mark = "†" if row.get("bridged") else ""
    ratio = row.get("ratio_fastest")
    ratio = f" ×{ratio:.2f}" if ratio is not None else ""
    return f"{time}{mark} [{_ms(row['min_s'])}–{_ms(row['max_s'])}]{ratio}"


def _cases(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """(function, device, mode, B, T) -> impl -> row, in the order the rows came."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        out.setdefault((r["function"], r["device"], r["mode"], r["B"], r["T"]), {})[r["impl"]] = r
    return out


def _functions(rows: list[dict]) -> list[str]:
    seen = []
    for r in rows:
        if r["function"] not in seen:
            seen.append(r["function"])
    return seen


# --- Markdown -------------------------------------------------------------------------------


def _header(h: dict) -> list[str]:
    clock = "; ".join(f"{d}: {c}" for d, c in h.get("clock", {}).items())
    t = h.get("timing", {})
    tol = h.get("tolerance", {})
    sizes = ", ".join(f"{B}×{T}" for B, T in h.get("sizes", []))
    lines = [
        "# refimpl against the frameworks' own implementations",
        "",
        f"Run {h.get('date', '?')} in `{h.get('env', '?')}`: torch {h.get('torch', '?')}, "
        f"Python {h.get('python', '?')}, {h.get('platform', '?')}, {h.get('cpu_count', '?')} CPUs, "
        f"{h.get('threads', '?')} torch thread(s); float32; seed {h.get('seed', '?')}; "
        f"sizes (B×T) {sizes}.",
        "",
        f"- **Clock**: {clock}. Each figure is the median of the timed calls with [min–max] in "
        "ms; the wall time is recorded beside it (results.json, `wall_*`) and its spread is "
        "summarized below: the CPU time of the computing thread does not count the time the "
        "thread waited for a core on a busy machine.",
        f"- **Repetitions**: {t.get('warmup', '?')} warm-up calls after the checked one, then "
        f"round-robin over the implementations of each case until each has "
        f"{t.get('budget_s', '?')} s of clock or {t.get('max_reps', '?')} calls (at least "
        f"{t.get('min_reps', '?')}); an implementation whose checked call took more than "
        f"{t.get('slow_s', '?')} s gets one timed call and no warm-up (its row says n = 1); the "
        "garbage collector is off during each timed call.",
        f"- **Checked before timed**: {tol.get('norm', '')} ≤ {tol.get('rel_error', '?')}. An "
        "implementation that disagrees is *mismatch* (with its error) and is not timed; one that "
        "raises is *error*.",
        f"- **memory-bound**: {h.get('memory_bound', '')}.",
        "- **refimpl-novalidate**: refimpl with the helpers of `refimpl/_checks.py` replaced by "
        "pass-throughs (" + ", ".join(f"`{p}`" for p in h.get("novalidate_patch", [])) + ").",
        "- ×r: the median over the fastest implementation's (memory-bound aside); **bold**: the "
        "fastest; †: timed in another environment and bridged (below).",
        "",
    ]
    return lines


def _environments(h: dict) -> list[str]:
    drift = h.get("anchor_drift", {})
    lines = ["## Environments", ""]
    for env, versions in h.get("versions", {}).items():
        listed = ", ".join(f"{fw} {v}" for fw, v in sorted(versions.items())) or "no framework"
        lines.append(f"- `{env}`: {listed}.")
        for fw, why in sorted(h.get("unavailable", {}).get(env, {}).items()):
            lines.append(f"  - {fw} not timed here: {why}.")
    lines.append("")
    if drift:
        lines += ["Frameworks that cannot share the main environment were timed in their own, on "
                  "the same inputs, with refimpl and the memory-bound pass beside them; their "
                  "times are multiplied by one scale per environment: the median over every case "
                  "of (refimpl median in the main run) / (refimpl median in theirs). The "
                  "memory-bound ratio between the runs checks the bridge (close to the anchor "
                  "ratio when it holds).", ""]
        table = []
        for env, rec in drift.items():
            a, m = rec.get("anchor_scale"), rec.get("memory_ratio")
            fmt = (lambda s: f"{s['median']:.2f} [{s['min']:.2f}–{s['max']:.2f}]" if s else "–")
            scale = rec.get("scale")
            table.append([env, len(rec.get("cases", [])),
                          "–" if scale is None else f"{scale:.2f}", fmt(a), fmt(m)])
        lines += [tabulate(table, ["environment", "cases", "scale applied",
                                   "refimpl here / there, per case",
                                   "memory-bound here / there, per case"], tablefmt="github"), ""]
        for env, rec in drift.items():
            if rec.get("same_refimpl") is False:
                lines += [f"**Warning**: refimpl's code differed between the main run and "
                          f"`{env}`'s (refimpl_digest): the anchor is not the same code, and the "
                          "bridged times are not comparable.", ""]
        off = [(env, c) for env, rec in drift.items() for c in rec.get("cases", [])
               if c.get("memory_ratio") and not 1 / _BRIDGE_OFF <= c["anchor_scale"] /
               c["memory_ratio"] <= _BRIDGE_OFF]
        if off:
            lines += ["The bridge check disagrees (anchor scale and memory-bound ratio more than "
                      f"{_BRIDGE_OFF}× apart) on these cases; their bridged times are less sure:",
                      ""]
            lines += [f"- {env}: {c['function']} {c['device']} {c['mode']} {c['B']}×{c['T']}: "
                      f"anchor scale {c['anchor_scale']:.2f}, memory-bound {c['memory_ratio']:.2f}"
                      for env, c in off] + [""]
    return lines


def _summary(rows: list[dict]) -> list[str]:
    table = []
    for (function, device, mode, B, T), by in _cases(rows).items():
        ref = by.get("refimpl")
        if not _ok(ref):
            continue
        frameworks = [r for i, r in by.items() if i not in _OWN and _ok(r)]
        best = min(frameworks, key=lambda r: r["median_s"]) if frameworks else None
        novalidate = by.get("refimpl-novalidate")
        memory = by.get("memory-bound")
        table.append([
            function, device, mode, _size(ref), _ms(ref["median_s"]),
            f"{best['impl']}{'†' if best.get('bridged') else ''}" if best else "–",
            _ms(best["median_s"]) if best else "–",
            f"{best['median_s'] / ref['median_s']:.2f}" if best else "–",
            f"{ref['median_s'] / memory['median_s']:.1f}" if _ok(memory) else "–",
            f"{ref['median_s'] / novalidate['median_s']:.2f}" if _ok(novalidate) else "–"])
    head = ["function", "device", "mode", "size", "refimpl ms", "fastest framework", "its ms",
            "framework / refimpl", "refimpl / memory-bound", "refimpl / novalidate"]
    return ["## refimpl vs the fastest framework", "",
            "framework / refimpl > 1: refimpl is faster. refimpl / memory-bound: how many times "
            "one read and write of the inputs refimpl takes. refimpl / novalidate: what the "
            "argument validation costs.", "",
            tabulate(table, head, tablefmt="github") if table else "(no refimpl time)", ""]


def _function_section(function: str, rows: list[dict], h: dict) -> list[str]:
    lines = [f"## {function}", ""]
    mine = [r for r in rows if r["function"] == function]
    impls = _order({r["impl"] for r in mine})
    for (device, mode) in dict.fromkeys((r["device"], r["mode"]) for r in mine):
        table = []
        for (_, d, m, B, T), by in _cases(mine).items():
            if (d, m) != (device, mode):
                continue
            timed = [r for i, r in by.items() if _ok(r) and i != "memory-bound"]
            fastest = min(timed, key=lambda r: r["median_s"])["impl"] if timed else None
            table.append([_size(next(iter(by.values())))] +
                         [_cell(by.get(i), i == fastest) for i in impls])
        lines += [f"{device}, {mode} (ms):", "", tabulate(table, ["size"] + impls,
                                                         tablefmt="github"), ""]
    notes = []
    for s in h.get("skipped", []):
        if s["function"] == function:
            notes.append(f"- {s['framework']} not timed: {s['reason']}")
    for e in h.get("entries", []):
        if e["function"] != function:
            continue
        said = [f"times `{e['source']}`" if e.get("source") else "",
                f"declared deviation: {e['deviation']}" if e.get("deviation") else "",
                "computes without gradient (forward only)"
                if not e.get("grad", True) and any(r["mode"] == "fwd+bwd" for r in mine) else ""]
        if any(said):
            notes.append(f"- {e['framework']}: " + "; ".join(x for x in said if x))
    for r in mine:
        if r.get("status") not in ("ok", None) and r.get("note"):
            notes.append(f"- {r['impl']} ({r['device']}, {r['mode']}, {_size(r)}): "
                         f"{r['status']}: {r['note']}")
    if not any(r["impl"] not in _OWN for r in mine):
        notes.append("- no framework timed on this function")
    return lines + notes + ([""] if notes else [])


def _spread_section(rows: list[dict]) -> list[str]:
    by_impl: dict[tuple, list[tuple[float, float]]] = {}
    for r in rows:
        if _ok(r) and r.get("min_s") and r.get("wall_min_s") and not r.get("bridged"):
            by_impl.setdefault((r["impl"], r["device"]), []).append(
                (r["max_s"] / r["min_s"], r["wall_max_s"] / r["wall_min_s"]))
    for r in rows:   # bridged rows: the spread of their own run
        if _ok(r) and r.get("bridged") and r.get("raw_min_s") and r.get("wall_min_s"):
            by_impl.setdefault((r["impl"], r["device"]), []).append(
                (r["raw_max_s"] / r["raw_min_s"], r["wall_max_s"] / r["wall_min_s"]))
    table = [[impl, device, len(v), f"{statistics.median(c for c, _ in v):.2f}",
              f"{max(c for c, _ in v):.2f}", f"{statistics.median(w for _, w in v):.2f}",
              f"{max(w for _, w in v):.2f}"]
             for (impl, device), v in sorted(by_impl.items(), key=lambda kv: _order(
                 [kv[0][0]]) + [kv[0][1]])]
    head = ["impl", "device", "cases", "clock max/min (median)", "clock max/min (worst)",
            "wall max/min (median)", "wall max/min (worst)"]
    return ["## Spread", "",
            "max/min of the timed calls per case: the clock the figures use, and the wall time "
            "beside it (how busy the machine was).", "",
            tabulate(table, head, tablefmt="github") if table else "(nothing timed)", ""]


def render(results: dict) -> str:
    """results.md from results.json's content."""
    rows, h = results["rows"], results.get("harness", {})
    lines = _header(h) + ["![median time per call against elements per call, one panel per "
                          "function](results.png)", ""] + _environments(h) + _summary(rows)
    for function in _functions(rows):
        lines += _function_section(function, rows, h)
    lines += _spread_section(rows)
    return "\n".join(lines).rstrip() + "\n"


# --- plot -----------------------------------------------------------------------------------


def plot(results: dict, path: str | Path) -> None:
    """A grid of log-log panels, one per function: median time against elements per call."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rows = [r for r in results["rows"] if _ok(r)]
    functions = _functions(results["rows"]) or ["(none)"]
    impls = _order({r["impl"] for r in rows})
    colors = {i: plt.get_cmap("tab10")(k % 10) for k, i in enumerate(impls)}
    ncols = min(4, len(functions))
    nrows = math.ceil(len(functions) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, function in zip(axes.flat, functions):
        mine = [r for r in rows if r["function"] == function]
        for impl in impls:
            for mode, style in (("fwd", "-"), ("fwd+bwd", "--")):
                for device, marker in (("cpu", "o"), ("cuda", "s")):
                    pts = sorted((r["elements"], r["median_s"]) for r in mine if r["impl"] == impl
                                 and r["mode"] == mode and r["device"] == device)
                    if pts:
                        ax.plot(*zip(*pts), style, marker=marker, ms=3, color=colors[impl],
                                lw=1.8 if impl in ("refimpl", "memory-bound") else 1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(function, fontsize=10)
        ax.set_xlabel("elements per call", fontsize=8)
        ax.set_ylabel("seconds (median)", fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
    for ax in list(axes.flat)[len(functions):]:
        ax.set_visible(False)
    from matplotlib.lines import Line2D
    bridged = {r["impl"] for r in rows if r.get("bridged")}
    handles = [Line2D([], [], color=colors[i], label=i + (" (bridged)" if i in bridged else ""))
               for i in impls]
    handles += [Line2D([], [], color="k", ls="-", label="fwd"),
                Line2D([], [], color="k", ls="--", label="fwd+bwd")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
               frameon=False)
    clock = "; ".join(results.get("harness", {}).get("clock", {}).values())
    fig.suptitle(f"time per call against size ({clock})", fontsize=11)
    height = fig.get_figheight()                      # margins in inches, as fractions
    fig.subplots_adjust(left=0.07 if ncols > 1 else 0.2, right=0.98, top=1 - 0.55 / height,
                        bottom=0.1 + 0.5 / height, wspace=0.35, hspace=0.6)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: dict, out: str | Path) -> list[Path]:
    """results.md and results.png into the folder ``out``."""
    out = Path(out)
    md, png = out / "results.md", out / "results.png"
    md.write_text(render(results))
    plot(results, png)
    return [md, png]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: python -m benchmarks.report DIR/results.json (an existing file)",
              file=sys.stderr)
        return 2
    path = Path(argv[0])
    for p in write(json.loads(path.read_text()), path.parent):
        print("wrote", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
