"""Certification reports: the JSON record (docs/contract.md, "The JSON report") written incrementally, and the
Markdown rendered from it.

Every added row rewrites the JSON file atomically (write, then rename), so Ctrl-C or a killed
run leaves a valid report marked ``"complete": false``. Same adapter and seed give the same
report, timings aside.
"""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tabulate import tabulate

import refimpl
from conformance.contract import CONTRACT_VERSION
from conformance.registry import REGISTRY, STATUSES


def versions(adapter) -> dict:
    out = {"python": platform.python_version()}
    for pkg in ["torch", "rlconform", *sorted(getattr(adapter, "framework", {}) or {})]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


class ReportWriter:
    def __init__(self, out_dir: str | Path, adapter, seed: int, warnings: list[str] | None = None,
                 framework_defaults: dict | None = None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = adapter.name
        self.data = {
            "adapter": adapter.name, "versions": versions(adapter), "complete": False,
            "seed": seed, "rlconform_version": refimpl.__version__,
            "contract_version": CONTRACT_VERSION,
            "framework_defaults": dict(framework_defaults or {}),
            "warnings": list(warnings or []), "summary": {s: 0 for s in STATUSES}, "checks": [],
        }
        self.shims = dict(getattr(adapter, "shims", {}) or {})
        self._flush()

    @property
    def json_path(self) -> Path:
        return self.dir / f"{self.name}.json"

    @property
    def md_path(self) -> Path:
        return self.dir / f"{self.name}.md"

    def add(self, row: dict):
        self.data["checks"].append(row)
        self.data["summary"] = dict(Counter({s: 0 for s in STATUSES}) + Counter(
            r["status"] for r in self.data["checks"]))
        for s in STATUSES:
            self.data["summary"].setdefault(s, 0)
        self._flush()

    def finish(self, complete: bool = True):
        """Write both reports; ``complete=False`` for an interrupted run."""
        self.data["complete"] = complete
        self._flush()
        self.md_path.write_text(render_markdown(self.data, self.shims))

    def _flush(self):
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=False))
        os.replace(tmp, self.json_path)


def verdict(data: dict) -> str:
    s = data["summary"]
    if not data.get("complete"):
        return "INCOMPLETE"
    return "CONFORMS" if s.get("fail", 0) == 0 and s.get("error", 0) == 0 else "DOES NOT CONFORM"


def _cell(text, n=160) -> str:
    text = "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def render_markdown(data: dict, shims: dict | None = None) -> str:
    s = data["summary"]
    lines = [f"# rlconform certification: `{data['adapter']}`", ""]
    lines.append(f"{verdict(data)}: " + ", ".join(f"{s.get(k, 0)} {k}" for k in STATUSES)
                 + f" (seed {data['seed']}, rlconform {data['rlconform_version']})")
    lines.append("")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    if data.get("framework_defaults"):
        lines += ["", "## Framework defaults", "",
                  tabulate(sorted(data["framework_defaults"].items()), ["setting", "value"],
                           tablefmt="github")]
    if shims:
        lines += ["", "## Shims (steps beyond calling conventions)", ""]
        lines += [f"- `{k}`: {v}" for k, v in shims.items()]
    if data.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in data["warnings"]]
    by_est = {}
    for r in data["checks"]:
        by_est.setdefault(r["estimator"], Counter())[r["status"]] += 1
    lines += ["", "## Summary by estimator", "",
              tabulate([[e] + [c.get(k, 0) for k in STATUSES] for e, c in sorted(by_est.items())],
                       ["estimator", *STATUSES], tablefmt="github")]
    rows = []
    for r in data["checks"]:
        chk = REGISTRY.get(r["id"])
        detail = r["message"] or ""
        if r.get("sample") and r["status"] in ("fail", "xfail", "error"):
            detail = f"{detail} [sample {r['sample']}]"
        if r.get("note"):
            detail = f"{detail} ({r['note']})" if detail else r["note"]
        if chk and r["status"] in ("fail", "xfail", "error"):
            detail = f"{detail} Consequence: {chk.consequence}."
        rows.append([r["status"], f"`{r['id']}`", r["estimator"], r["kind"], _cell(detail),
                     _cell(chk.equation if chk else "", 120), _cell(r["clause"], 120)])
    lines += ["", "## Checks", "",
              tabulate(rows, ["status", "check", "estimator", "kind", "message", "equation",
                              "source"], tablefmt="github"), ""]
    lines.append(f"{verdict(data)} · report `{data['adapter']}.json`")
    return "\n".join(lines) + "\n"
