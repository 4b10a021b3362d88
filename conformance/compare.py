"""``rlconform compare``: one matrix (checks x adapters) from certification reports.

Frameworks that cannot share a Python environment are certified each in its own and compared
here from their JSON reports; adapter names given instead of files are certified in-process.
Writes ``comparison.md``, ``comparison.json`` and a PNG heatmap of statuses.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tabulate import tabulate

from conformance.registry import STATUSES

COLOURS = {"pass": "#4caf50", "xfail": "#ffc107", "skip": "#bdbdbd", "fail": "#e53935",
           "error": "#6a1b9a", None: "#ffffff"}


def _load(inputs, seed) -> list[dict]:
    reports = []
    for item in inputs:
        path = Path(item)
        if path.suffix == ".json":
            if not path.exists():
                raise FileNotFoundError(f"no report {item}")
            data = json.loads(path.read_text())
            if "adapter" not in data or "checks" not in data:
                continue                          # e.g. a previous comparison.json in the glob
            reports.append(data)
        else:
            from conformance.runner import certify
            with tempfile.TemporaryDirectory() as tmp:
                reports.append(certify(item, tmp, seed=seed))
    if not reports:
        raise ValueError("nothing to compare")
    return reports


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    if row["kind"] == "reference" and row["status"] in ("fail", "xfail") and row.get("rel_err"):
        return f"{row['status']} ({row['rel_err']:.2g})"
    return row["status"]


def compare(inputs, out: str | Path, seed: int = 0) -> dict:
    reports = _load(inputs, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [r["adapter"] for r in reports]
    by_adapter = {r["adapter"]: {c["id"]: c for c in r["checks"]} for r in reports}
    ids = sorted({cid for r in reports for cid in by_adapter[r["adapter"]]})
    matrix = {cid: {n: by_adapter[n].get(cid) for n in names} for cid in ids}
    data = {
        "adapters": names,
        "summaries": {r["adapter"]: r["summary"] for r in reports},
        "complete": {r["adapter"]: r["complete"] for r in reports},
        "checks": [{"id": cid, **{n: (None if row is None else
                                      {k: row.get(k) for k in ("status", "rel_err", "message")})
                                  for n, row in cols.items()}} for cid, cols in matrix.items()],
    }
    (out / "comparison.json").write_text(json.dumps(data, indent=1))
    summary = tabulate([[n] + [reports[i]["summary"].get(s, 0) for s in STATUSES]
                        for i, n in enumerate(names)], ["adapter", *STATUSES], tablefmt="github")
    differing = [cid for cid in ids if len({(_cell(matrix[cid][n]) if matrix[cid][n] else None)
                                           for n in names}) > 1 or any(
        matrix[cid][n] and matrix[cid][n]["status"] != "pass" for n in names)]
    table = tabulate([[f"`{cid}`"] + [_cell(matrix[cid][n]) for n in names] for cid in differing],
                     ["check", *names], tablefmt="github")
    md = ["# rlconform comparison", "", summary, "",
          "![status heatmap](comparison.png)", "",
          f"## Checks that are not a pass everywhere ({len(differing)} of {len(ids)})", "",
          table if differing else "Every check passes for every adapter.", ""]
    md += _defaults_section(reports) + _details_section(reports)
    (out / "comparison.md").write_text("\n".join(md))
    _heatmap(names, ids, matrix, out / "comparison.png")
    return data


def _defaults_section(reports) -> list[str]:
    """The frameworks' defaults for the reference sheet's hyperparameters, as each adapter read
    them from its framework's config classes at run time."""
    keys = sorted({k for r in reports for k in (r.get("framework_defaults") or {})})
    if not keys:
        return []
    rows = [[k] + [_short((r.get("framework_defaults") or {}).get(k, "—")) for r in reports]
            for k in keys]
    return ["## Framework defaults", "", tabulate(rows, ["setting", *[r["adapter"] for r in reports]],
                                                  tablefmt="github"), ""]


def _short(x, n=40) -> str:
    text = "None" if x is None else str(x)
    return text if len(text) <= n else text[: n - 1] + "…"


def _details_section(reports) -> list[str]:
    """Every non-pass: the equation, what the framework does instead (the declared sentence with
    its file:line, or the check's message), the size of the difference, the consequence."""
    from conformance.checks import all_checks
    from conformance.registry import REGISTRY

    all_checks(thorough=True)
    out = ["## Every non-pass, explained", ""]
    any_row = False
    for r in reports:
        rows = [c for c in r["checks"] if c["status"] not in ("pass",)]
        if not rows:
            continue
        any_row = True
        out += [f"### `{r['adapter']}`", ""]
        for c in rows:
            chk = REGISTRY.get(c["id"])
            size = (f"; difference {c['abs_err']:.3g} (relative {c['rel_err']:.3g}) on sample "
                    f"`{c.get('sample')}`" if c.get("abs_err") is not None else
                    (f"; on sample `{c.get('sample')}`" if c.get("sample") else ""))
            out.append(f"- **{c['status']}** `{c['id']}`: {c['message']}{size}")
            if chk is not None:
                out.append(f"  - equation: {chk.equation}")
                if c["status"] in ("fail", "xfail", "error"):
                    out.append(f"  - consequence: {chk.consequence}")
        out.append("")
    return out if any_row else []


def _heatmap(names, ids, matrix, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    order = ["pass", "xfail", "skip", "fail", "error", None]
    grid = [[order.index(matrix[cid][n]["status"] if matrix[cid][n] else None) for n in names]
            for cid in ids]
    height = max(3.0, 0.16 * len(ids) + 1.5)
    fig, ax = plt.subplots(figsize=(2.0 + 1.2 * len(names), height))
    ax.imshow(grid, aspect="auto", cmap=ListedColormap([COLOURS[s] for s in order]),
              vmin=0, vmax=len(order) - 1, interpolation="nearest")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(ids)), ids, fontsize=5)
    ax.legend(handles=[Patch(color=COLOURS[s], label=s or "absent") for s in order],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    ax.set_title("rlconform: status of each check")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
