"""``rlconform compare``: what the frameworks do differently, from certification reports.

Frameworks that cannot share a Python environment are certified each in its own and compared
here from their JSON reports; adapter names given instead of files are certified in-process.
Every report read is validated against its JSON Schema (``docs/report.schema.json``, shipped as
``conformance/report.schema.json``): a file of the wrong shape is a ``ReportError`` naming the
file and the JSON path of the wrong field. A previous ``comparison.json`` (caught by a shell
glob) is skipped. An incomplete report is marked "(incomplete)" beside its adapter's name.
Writes ``comparison.md`` (the findings, conformance/findings.py, per framework, the
gradient class first; then a framework x estimator grid, also drawn as ``comparison.png``),
``comparison-matrix.md`` (every check against every adapter) and ``comparison.json``.
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tabulate import tabulate

from conformance.context import digits_apart
from conformance.findings import (NAMES, RANK, Finding, findings, framework_of, framework_order,
                                  qualified_passes)
from conformance.registry import REGISTRY, STATUSES
from conformance.report import check_writable, is_not_provided, md_table, reproduce_line

#: the grid's colours: the classes from the most serious (dark red) to the least
GRID_COLOURS = {"gradient": "#b71c1c", "value": "#ef6c00", "padding": "#6a1b9a",
                "validation": "#fbc02d", "precision": "#90caf9", "unclassified": "#9e9e9e",
                "unverified": "#c5e1a5", "pass": "#66bb6a", None: "#eeeeee"}


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
    """Compare the reports (or adapters) ``inputs``; write into ``out``: ``comparison.md`` (the
    findings per framework, gradient class first, then the framework x estimator grid),
    ``comparison.png`` (the grid), ``comparison-matrix.md`` (every check x every adapter) and
    ``comparison.json`` (the matrix and the findings). Returns the JSON's data."""
    from conformance.checks import all_checks

    all_checks(thorough=True)                  # the registry knows every check's equation
    reports = _load(inputs, seed)
    out = check_writable(out)
    names = [r["adapter"] for r in reports]
    by_adapter = {r["adapter"]: {c["id"]: c for c in r["checks"]} for r in reports}
    ids = sorted({cid for r in reports for cid in by_adapter[r["adapter"]]})
    matrix = {cid: {n: by_adapter[n].get(cid) for n in names} for cid in ids}
    found = findings(reports)
    data = {
        "adapters": names,
        "summaries": {r["adapter"]: r["summary"] for r in reports},
        "complete": {r["adapter"]: r["complete"] for r in reports},
        "checks": [{"id": cid, **{n: (None if row is None else
                                      {k: row.get(k) for k in ("status", "rel_err", "message")})
                                  for n, row in cols.items()}} for cid, cols in matrix.items()],
        "findings": [f.to_json(out) for f in found],
    }
    (out / "comparison.json").write_text(json.dumps(data, indent=1))
    grid = estimator_grid(reports, found)
    md = ["# rlconform comparison", "",
          "What each framework computes differently from the contract, one finding per declared "
          "deviation, ranked by what it does to training: **gradient** (training changes), "
          "**value** (logged values only), **padding** (NaN/inf at padded positions leaks), "
          "**validation** (invalid input accepted), **precision** (lower precision than given). "
          "Every check of every variant, side by side: [comparison-matrix.md]"
          "(comparison-matrix.md).", "", *_incomplete_note(reports)]
    md += _findings_sections(found, out)
    md += _grid_section(grid)
    md += training_section(reports, out, [Path(i).parent for i in inputs if isinstance(i, str)
                                          and i.endswith(".json")])
    md += _qualified_section(reports)
    md += _summary_section(reports)
    md += _skips_section(reports)
    md += _defaults_section(reports)
    (out / "comparison.md").write_text("\n".join(md))
    (out / "comparison-matrix.md").write_text(_matrix_document(reports, names, ids, matrix))
    _grid_picture(grid, out / "comparison.png")
    return data


# --- comparison.md --------------------------------------------------------------------------------

def _by_framework(found: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for f in found:
        out.setdefault(f.framework, []).append(f)
    return out


def _finding_lines(f: Finding, out_dir: Path) -> list[str]:
    """One finding: the sentence, then its checks with their variants, equations and the size
    of the difference, what it does to training, where, upstream, the reproduction."""
    label = {"declared": "", "stale": " (stale declaration: the framework now conforms)",
             "undeclared": " (undeclared fail)", "error": " (error)"}[f.kind]
    lines = [f"- **{f.cls}**{label}: {f.sentence}"]
    for check_id in f.check_ids:
        chk = REGISTRY.get(check_id)
        row = f.sample_row(check_id)
        variants = ", ".join(f"`{a}`" for a in f.adapters(check_id))
        lines.append(f"  - `{check_id}` ({variants})")
        if chk is not None:
            lines.append(f"    - equation: {chk.equation}")
        size = _size(row)
        if size:
            lines.append(f"    - on the sample: {size}")
    lines.append(f"  - what it does to training: {f.effect}")
    if f.locations:
        lines.append("  - where: " + ", ".join(f"`{loc}`" for loc in f.locations))
    lines.append("  - upstream: " + (", ".join(f"<{u}>" for u in f.upstream) if f.upstream
                                     else "none known"))
    links = f.repro_links(out_dir)
    if links:
        lines.append("  - reproduce: " + ", ".join(f"[{link}]({link})" for link in links))
    elif f.cls in ("gradient", "value") and f.rows and f.rows[0][1].get("kind") == "training":
        name, row = f.rows[0]           # a trainer's step: rerun the check in the framework's env
        lines.append(f"  - reproduce: `{reproduce_line(name, row['id'])}`")
    elif f.cls in ("gradient", "value") and f.rows:
        name, row = f.rows[0]
        lines.append(f"  - reproduce: `rlconform repro {name} '{row['id']}' --out repro.py` "
                     "(no standalone script could be made: the call raises or agrees per call)")
    return lines


def _size(row: dict) -> str:
    """The size of the difference on the failing sample, when the row has numbers."""
    if row.get("expected") is None and row.get("actual") is None:
        # an input check: what it passed, and what came back (its message)
        return (f"{row.get('message', '').split(' | declared: ')[0]} (sample `{row['sample']}`)"
                if row.get("sample") else "")
    e, a = row.get("expected"), row.get("actual")
    digits = digits_apart(a, e)
    text = f"expected {_number(e, digits)}, actual {_number(a, digits)}"
    if row.get("abs_err") is not None:
        text += f", abs err {row['abs_err']:.3g}"
    if row.get("rel_err") is not None:
        text += f", rel err {row['rel_err']:.3g}"
    return text + (f" (sample `{row['sample']}`)" if row.get("sample") else "")


def _number(x, digits: int = 6) -> str:
    """A number with ``digits`` significant digits (enough to tell expected from actual)."""
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _findings_sections(found: list[Finding], out_dir: Path) -> list[str]:
    """Gradient-class findings per framework first, then every other finding per framework."""
    fws = _by_framework(found)
    lines = ["## What changes training (gradient class)", ""]
    gradient = {fw: [f for f in fs if f.cls == "gradient"] for fw, fs in fws.items()}
    if not any(gradient.values()):
        lines += ["No finding of the gradient class.", ""]
    for fw, fs in gradient.items():
        if fs:
            lines += [f"### {NAMES.get(fw, fw)}", ""]
            for f in fs:
                lines += _finding_lines(f, out_dir)
            lines.append("")
    rest = {fw: [f for f in fs if f.cls != "gradient"] for fw, fs in fws.items()}
    if any(rest.values()):
        lines += ["## Every other finding, per framework", ""]
        for fw, fs in rest.items():
            if not fs:
                continue
            counts = ", ".join(f"{c} {sum(f.cls == c for f in fs)}" for c in RANK
                               if any(f.cls == c for f in fs))
            lines += [f"### {NAMES.get(fw, fw)} ({counts})", ""]
            for f in fs:
                lines += _finding_lines(f, out_dir)
            lines.append("")
    if not found:
        lines += ["Every check passes or is skipped for every adapter.", ""]
    return lines


def estimator_grid(reports: list[dict], found: list[Finding]) -> dict:
    """{framework: {estimator: (worst class or "pass" or None, {class: number of findings})}}:
    the worst class of the findings touching the estimator, "pass" when a check of it passed
    and none failed ("unverified" when some of those passes are qualified: the input had to be
    shaped so that a behaviour could not show), None when every check of it was skipped."""
    ran: dict[str, dict[str, bool]] = {}
    qualified: set = set()                  # (framework, estimator) with a pass listed unverified
    for r in reports:
        cells = ran.setdefault(framework_of(r["adapter"]), {})
        for row in r["checks"]:
            if row["kind"] == "training":       # the trainer-level section has its own table
                continue
            cells[row["estimator"]] = cells.get(row["estimator"], False) or row["status"] != "skip"
            if row["status"] == "pass" and row.get("qualified"):
                qualified.add((framework_of(r["adapter"]), row["estimator"]))
    grid = {}
    for fw in sorted(ran, key=framework_order):
        grid[fw] = {}
        for est, any_ran in sorted(ran[fw].items()):
            counts: dict[str, int] = {}
            for f in found:
                if f.framework == fw and est in f.estimators:
                    counts[f.cls] = counts.get(f.cls, 0) + 1
            passed = "unverified" if (fw, est) in qualified else "pass"
            worst = min(counts, key=RANK.__getitem__) if counts else (passed if any_ran else None)
            grid[fw][est] = (worst, counts)
    return grid


def _grid_cell(cell) -> str:
    """``**worst** n`` (then the other classes' counts), "pass", or "—"."""
    worst, counts = cell
    if worst is None:
        return "—"
    if not counts:
        return "pass (some unverified)" if worst == "unverified" else "pass"
    others = ", ".join(f"{c} {n}" for c, n in sorted(counts.items(), key=lambda x: RANK[x[0]])
                       if c != worst)
    return f"**{worst}** {counts[worst]}" + (f" ({others})" if others else "")


def _grid_section(grid: dict) -> list[str]:
    estimators = sorted({e for cells in grid.values() for e in cells})
    rows = [[f"`{e}`"] + [_grid_cell(grid[fw].get(e, (None, {}))) for fw in grid]
            for e in estimators]
    return ["## Framework × estimator", "",
            "The worst class among the findings that touch each estimator, with the number of "
            "findings of each class; pass: every check that ran passed (some unverified: a pass "
            "that holds only because the input was shaped so that a behaviour could not show); "
            "—: not provided.", "",
            "![framework x estimator](comparison.png)", "",
            md_table(["estimator", *[NAMES.get(fw, fw) for fw in grid]], rows), ""]


#: the columns of the trainer-level table: check name (after "<algorithm>/") -> heading
TRAINING_COLUMNS = {"step-matches-recipe-llama": "step, Llama", "step-matches-recipe-gpt2":
                    "step, GPT-2", "grad-accum": "grad_accum 2, 4", "padding-invariant":
                    "extra padding", "kl-term-exact": "KL term", "kl-in-reward": "KL in reward",
                    "temperature": "temperature", "nan-old-logp-ignored": "NaN old_logp",
                    "config-honoured": "config honoured",
                    "run-reward-rises": "short run"}


def _training_cell(row: dict | None) -> str:
    """status and the largest relative gradient error (the check's worst parameter)."""
    if row is None or row["status"] == "skip":
        return "—"
    err = row.get("rel_err")
    text = {"pass": "pass", "xfail": "**declared**", "fail": "**FAIL**",
            "error": "**error**"}[row["status"]]
    return f"{text} {err:.1e}" if isinstance(err, (int, float)) and err else text


def training_section(reports: list[dict], out: Path, report_dirs=()) -> list[str]:
    """Trainer level: per adapter and algorithm, the status of each training check with the
    relative L2 error of the worst parameter's gradient; then the learning curves of the short
    runs (``runs/<adapter>/<algorithm>/curves.png`` beside a report), drawn beside refimpl's."""
    rows = []
    for r in reports:
        by_alg: dict[str, dict[str, dict]] = {}
        for c in r["checks"]:
            if c["kind"] == "training":
                by_alg.setdefault(c["estimator"], {})[c["id"].split("/", 1)[1]] = c
        for alg, cells in sorted(by_alg.items()):
            if all(c["status"] == "skip" for c in cells.values()):
                continue
            rows.append([f"`{r['adapter']}`", alg] + [_training_cell(cells.get(k))
                                                      for k in TRAINING_COLUMNS])
    if not rows:
        return []
    lines = ["## Trainer level: one real step, and short runs", "",
             "Each framework's trainer computes one optimisation step (`train_step`) on tiny "
             "Llama and GPT-2 models and a ragged batch; the loss and every parameter's gradient "
             "are compared with refimpl's recipe. A cell gives the status and the relative L2 "
             "error of the parameter with the largest error (tolerance 1e-4; *declared*: a "
             "known deviation, with the framework's file:line in the findings above); —: the "
             "variant does not implement it.", "",
             md_table(["adapter", "algorithm", *TRAINING_COLUMNS.values()], rows), ""]
    curves = []
    for d in list(dict.fromkeys([*report_dirs, out])):
        runs = Path(d) / "runs"
        if runs.is_dir():
            curves += sorted(runs.glob("*/*/curves.png"))
    if curves:
        lines += ["### Learning curves of the short runs (`--slow`), beside refimpl's loop", ""]
        for path in dict.fromkeys(curves):
            try:
                rel = path.relative_to(out)
            except ValueError:
                rel = path
            lines.append(f"![{path.parent.parent.name} {path.parent.name}]({rel.as_posix()})")
        lines.append("")
    return lines


def _qualified_section(reports: list[dict]) -> list[str]:
    passes = qualified_passes(reports)
    if not passes:
        return []
    lines = ["## Unverified passes", "",
             "Passes that hold only because the adapter had to shape the input so that the "
             "framework's behaviour cannot show.", ""]
    for (fw, sentence), rows in passes.items():
        ids = ", ".join(dict.fromkeys(f"`{r['id']}`" for _, r in rows))
        lines.append(f"- {NAMES.get(fw, fw)}: {ids}: {sentence}")
    return lines + [""]


def _summary_section(reports: list[dict]) -> list[str]:
    rows = [[_label(r)] + [str(r["summary"].get(s, 0)) for s in STATUSES] for r in reports]
    return ["## Statuses per variant", "", md_table(["adapter", *STATUSES], rows), ""]


def _skips_section(reports: list[dict]) -> list[str]:
    """Per framework: how many checks each variant skipped, and every reason other than "not
    provided" once, with the variants and checks it concerns (a variant's own name in a reason
    at the start of a reason is written "the variant", so that variants share it)."""
    lines = ["## Skips", "",
             "Per variant, the number of checks skipped (most because the framework does not "
             "provide the function); then every other reason, once.", ""]
    by_fw: dict[str, list[dict]] = {}
    for r in reports:
        by_fw.setdefault(framework_of(r["adapter"]), []).append(r)
    for fw in sorted(by_fw, key=framework_order):
        counts = [(r["adapter"], sum(c["status"] == "skip" for c in r["checks"]),
                   sum(is_not_provided(c) for c in r["checks"])) for r in by_fw[fw]]
        if not any(n for _, n, _ in counts):
            continue
        lines.append(f"- {NAMES.get(fw, fw)}: " + ", ".join(
            f"`{a}` {n} ({n - absent} not for want of the function)" if n - absent else f"`{a}` {n}"
            for a, n, absent in counts))
        reasons: dict[str, dict[str, list[str]]] = {}
        for r in by_fw[fw]:
            for c in r["checks"]:
                if c["status"] == "skip" and not is_not_provided(c):
                    reason = c.get("message") or "(no reason given)"
                    own = f"unsupported: {r['adapter']} "
                    if reason.startswith(own):
                        reason = "unsupported: the variant " + reason[len(own):]
                    entry = reasons.setdefault(reason, {"ids": [], "variants": []})
                    entry["ids"].append(c["id"])
                    entry["variants"].append(r["adapter"])
        for reason, entry in reasons.items():
            ids = ", ".join(f"`{i}`" for i in dict.fromkeys(entry["ids"]))
            variants = ", ".join(dict.fromkeys(entry["variants"]))
            lines.append(f"  - {reason} ({variants}): {ids}")
    return lines + [""]


# --- comparison-matrix.md: every check x every adapter --------------------------------------------

def _matrix_document(reports, names, ids, matrix) -> str:
    labels = [_label(r) for r in reports]
    summary = tabulate([[labels[i]] + [reports[i]["summary"].get(s, 0) for s in STATUSES]
                        for i in range(len(names))], ["adapter", *STATUSES], tablefmt="github")
    differing = [cid for cid in ids if len({(_cell(matrix[cid][n]) if matrix[cid][n] else None)
                                           for n in names}) > 1 or any(
        matrix[cid][n] and matrix[cid][n]["status"] not in ("pass", "skip") for n in names)]
    table = md_table(["check", *labels],
                     [[f"`{cid}`"] + [_cell(matrix[cid][n]) for n in names] for cid in differing])
    md = ["# rlconform comparison: every check", "", "The findings, ranked by what they do to "
          "training, are in [comparison.md](comparison.md).", "", summary, "",
          *_incomplete_note(reports),
          f"## Checks whose status differs between adapters, or that fail ({len(differing)} of "
          f"{len(ids)})", "", table if differing else "Every check passes for every adapter.", ""]
    return "\n".join(md)


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


def _grid_picture(grid: dict, path: Path):
    """The framework x estimator grid as a picture readable at normal size: one coloured cell
    per (estimator, framework), the worst class, and the number of findings written in it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    order = [*RANK, "unverified", "pass", None]
    frameworks = list(grid)
    estimators = sorted({e for cells in grid.values() for e in cells})
    values = [[order.index(grid[fw].get(e, (None, {}))[0]) for fw in frameworks]
              for e in estimators]
    size = (3.6 + 1.15 * len(frameworks), max(3.0, 1.2 + 0.42 * len(estimators)))
    fig, ax = plt.subplots(figsize=size)
    ax.imshow(values, aspect="auto", cmap=ListedColormap([GRID_COLOURS[c] for c in order]),
              vmin=0, vmax=len(order) - 1, interpolation="nearest")
    for i, e in enumerate(estimators):
        for j, fw in enumerate(frameworks):
            worst, counts = grid[fw].get(e, (None, {}))
            if counts:
                ax.text(j, i, str(sum(counts.values())), ha="center", va="center", fontsize=12,
                        color="white" if worst in ("gradient", "padding") else "black")
    ax.set_xticks(range(len(frameworks)), [NAMES.get(f, f) for f in frameworks], fontsize=12,
                  rotation=25, ha="right")
    ax.set_yticks(range(len(estimators)), estimators, fontsize=11)
    ax.set_xticks([x - 0.5 for x in range(1, len(frameworks))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, len(estimators))], minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="minor", length=0)
    labels = {"unverified": "pass, some unverified", None: "not provided"}
    ax.legend(handles=[Patch(color=GRID_COLOURS[c], label=labels.get(c, c)) for c in order],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=11, frameon=False,
              title="worst class (number of findings)", title_fontsize=11)
    ax.set_title("What differs from the contract, per framework", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
