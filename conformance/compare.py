"""``rlconform compare``: one matrix (checks x adapters) from certification reports.

Frameworks that cannot share a Python environment are certified each in its own and compared
here from their JSON reports; adapter names given instead of files are certified in-process.
Every report read is validated against its JSON Schema (``docs/report.schema.json``, shipped as
``conformance/report.schema.json``): a file of the wrong shape is a ``ReportError`` naming the
file and the JSON path of the wrong field. A previous ``comparison.json`` (caught by a shell
glob) is skipped. An incomplete report is marked "(incomplete)" beside its adapter's name.
Writes ``comparison.md``, ``comparison.json`` and a PNG heatmap of statuses.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tabulate import tabulate

from conformance.registry import STATUSES
from conformance.report import check_writable, consequence

COLOURS = {"pass": "#4caf50", "xfail": "#ffc107", "skip": "#bdbdbd", "fail": "#e53935",
           "error": "#6a1b9a", None: "#ffffff"}


class ReportError(ValueError):
    """A file given to ``compare`` is not a certification report (docs/report.schema.json);
    the message names the file and the JSON path of the wrong field, in one line."""


@lru_cache(maxsize=1)
def report_schema() -> dict:
    """The JSON Schema of a certification report, shipped as ``conformance/report.schema.json``
    (a copy of ``docs/report.schema.json``)."""
    return json.loads(resources.files("conformance").joinpath("report.schema.json")
                      .read_text(encoding="utf-8"))


def validate_report(data, source: str = "report") -> None:
    """``ReportError`` naming ``source`` and the JSON path of the first wrong field when
    ``data`` is not a report as docs/contract.md ("The JSON report") defines it."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(report_schema())
    error = best_match(validator.iter_errors(data))
    if error is not None:
        message = " ".join(error.message.split())
        if len(message) > 200:
            message = message[:199] + "…"
        raise ReportError(f"{source}: not an rlconform report: at {error.json_path}: {message}")


def is_comparison(data) -> bool:
    """A previous ``comparison.json`` (for instance caught by a shell glob)."""
    return (isinstance(data, dict) and "adapter" not in data
            and isinstance(data.get("adapters"), list) and isinstance(data.get("checks"), list))


def read_report(path: str | Path) -> dict | None:
    """The report in ``path``, validated; None for a previous comparison.json."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no report {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON: {exc}") from None
    if is_comparison(data):
        return None
    validate_report(data, str(path))
    return data


def _load(inputs, seed) -> list[dict]:
    reports = []
    for item in inputs:
        path = Path(item)
        if path.suffix == ".json":
            data = read_report(path)
            if data is not None:
                reports.append(data)
        else:
            from conformance.runner import certify
            with tempfile.TemporaryDirectory() as tmp:
                reports.append(certify(item, tmp, seed=seed, isolate=False))
    if not reports:
        raise ValueError("nothing to compare")
    return reports


def _label(report: dict) -> str:
    """The adapter's name, marked when its report is incomplete."""
    return report["adapter"] + ("" if report.get("complete") else " (incomplete)")


def _incomplete_note(reports) -> list[str]:
    cut = [r for r in reports if not r.get("complete")]
    if not cut:
        return []
    which = ", ".join(f"`{r['adapter']}` ({len(r['checks'])} checks ran)" for r in cut)
    return [f"**Note**: incomplete reports (the run was interrupted or killed): {which}. A check "
            "that did not run shows as — and counts in no column.", ""]


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    if row["kind"] == "reference" and row["status"] in ("fail", "xfail") and row.get("rel_err"):
        return f"{row['status']} ({row['rel_err']:.2g})"
    return row["status"]


def compare(inputs, out: str | Path, seed: int = 0) -> dict:
    reports = _load(inputs, seed)
    out = check_writable(out)
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
    labels = [_label(r) for r in reports]
    summary = tabulate([[labels[i]] + [reports[i]["summary"].get(s, 0) for s in STATUSES]
                        for i in range(len(names))], ["adapter", *STATUSES], tablefmt="github")
    differing = [cid for cid in ids if len({(_cell(matrix[cid][n]) if matrix[cid][n] else None)
                                           for n in names}) > 1 or any(
        matrix[cid][n] and matrix[cid][n]["status"] != "pass" for n in names)]
    table = tabulate([[f"`{cid}`"] + [_cell(matrix[cid][n]) for n in names] for cid in differing],
                     ["check", *labels], tablefmt="github")
    md = ["# rlconform comparison", "", summary, "", *_incomplete_note(reports),
          "![status heatmap](comparison.png)", "",
          f"## Checks that are not a pass everywhere ({len(differing)} of {len(ids)})", "",
          table if differing else "Every check passes for every adapter.", ""]
    md += _defaults_section(reports) + _details_section(reports)
    (out / "comparison.md").write_text("\n".join(md))
    _heatmap(names, ids, matrix, out / "comparison.png", labels)
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
        out += [f"### `{r['adapter']}`" + ("" if r.get("complete") else " (incomplete)"), ""]
        for c in rows:
            chk = REGISTRY.get(c["id"])
            size = (f"; difference {c['abs_err']:.3g} (relative {c['rel_err']:.3g}) on sample "
                    f"`{c.get('sample')}`" if c.get("abs_err") is not None else
                    (f"; on sample `{c.get('sample')}`" if c.get("sample") else ""))
            out.append(f"- **{c['status']}** `{c['id']}`: {c['message']}{size}")
            if chk is not None:
                out.append(f"  - equation: {chk.equation}")
            said = consequence(c, chk)
            if said:
                out.append(f"  - {said[0].lower()}{said[1:]}")
        out.append("")
    return out if any_row else []


def _heatmap(names, ids, matrix, path: Path, labels=None):
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
    ax.set_xticks(range(len(names)), labels or names, rotation=30, ha="right")
    ax.set_yticks(range(len(ids)), ids, fontsize=5)
    ax.legend(handles=[Patch(color=COLOURS[s], label=s or "absent") for s in order],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
    ax.set_title("rlconform: status of each check")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
