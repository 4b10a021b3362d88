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
import re
import shlex
from collections import Counter
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tabulate import tabulate

import refimpl
from conformance import contract_doc
from conformance.contract import CONTRACT_VERSION
from conformance.registry import REGISTRY, STATUSES

# --- what a non-pass row tells its reader ----------------------------------------------------------

#: the start of the message of a declaration that no longer fails (docs/contract.md)
STALE = "declared deviation no longer occurs"
STALE_ADVICE = ("The framework now behaves as the contract says: remove the declaration (or pin "
                "the version it was written for)")
TIMEOUT_ADVICE = ("The call did not return within --timeout; raise --timeout if the framework is "
                  "slow, or look for a hang")
KILLED_ADVICE = "The adapter's process died (segfault or os._exit) during the call"
RAISED_ADVICE = "The call raised or returned something malformed; see the message"


#: what a finding of each class does to a training run, one sentence each (docs/contract.md,
#: "Certification and statuses")
CLASS_EFFECT = {
    "gradient": ("Training changes: the gradient on real tokens differs from the contract's, so "
                 "every update, and the policy trained with them, differs."),
    "value": ("Training is unchanged (the gradient is the contract's); the value differs, so "
              "logged losses, curves and thresholds set on them differ."),
    "padding": ("Real tokens are unaffected until NaN or inf stands at a padded position; then it "
                "reaches the output and its gradient, and one such batch can poison the weights."),
    "validation": ("Invalid input is accepted silently: a caller's mistake trains on a "
                   "meaningless value instead of raising an error."),
    "precision": ("The result differs from the contract's by no more than float32 rounding "
                  "(about 1e-7 relative): lower-precision arithmetic where float64 was given, or "
                  "a guard of that size."),
}
#: the words a check adds to a call that raised on a valid edge value (conformance.context)
STOPS = "(a run with it stops)"


def is_stale(row: dict) -> bool:
    """A ``fail`` row that is a declared deviation which no longer occurs."""
    return row["status"] == "fail" and (row.get("message") or "").startswith(STALE)


def declared_sentence(row: dict) -> str | None:
    """The ``known_deviations`` sentence an ``xfail`` (or stale) row carries."""
    message = row.get("message") or ""
    if row["status"] == "xfail" and " | declared: " in message:
        return message.split(" | declared: ", 1)[1]
    if is_stale(row):
        return message[len(STALE):].lstrip(": ")
    return None


#: the classes of a non-pass (docs/contract.md, "The JSON report"), the one that changes
#: training first
CLASSES = ("gradient", "value", "padding", "validation", "precision")
UNCLASSIFIED = "unclassified"


def row_class(row: dict) -> str:
    """The row's ``class``; "unclassified" where the report has none (written before classes)."""
    return row.get("class") or UNCLASSIFIED


def row_deviation(row: dict) -> str | None:
    """The declared sentence of a row: its ``deviation`` field, or for a report written before
    that field, the part of the message after " | declared: " (or after a stale prefix)."""
    return row.get("deviation") or declared_sentence(row)


def is_qualified(row: dict) -> str | None:
    """The sentence of a pass that holds only because the adapter shaped the input so that the
    framework's behaviour cannot show (its ``qualified`` field, or a note "qualified: ...")."""
    if row["status"] != "pass":
        return None
    if row.get("qualified"):
        return row["qualified"]
    note = row.get("note") or ""
    return note[len("qualified: "):].split("; ")[0] if note.startswith("qualified: ") else None


def reproduce_line(adapter: str, check_id: str, seed: int = 0) -> str:
    """The command that runs one check again, as the command line prints it under a non-pass
    (cli.reproduce_command): into a ``reproduce`` folder, so the full report is not
    overwritten."""
    chk = REGISTRY.get(check_id)
    argv = ["rlconform", "certify", adapter, "--out", "reproduce", "-k", check_id]
    if seed:
        argv += ["--seed", str(seed)]
    if chk is not None and chk.thorough:
        argv.append("--thorough")
    return " ".join(shlex.quote(a) for a in argv)


def repro_file(adapter: str, check_id: str) -> str:
    """A check's standalone script, relative to the scripts' directory (``reports/repro``)."""
    return f"{adapter}/{check_id.replace('/', '__')}.py"


def repro_path(adapter: str, check_id: str) -> str:
    """Where ``rlconform repro`` writes the standalone script of a check, relative to the
    reports' directory."""
    return f"repro/{repro_file(adapter, check_id)}"


def error_advice(row: dict) -> str:
    """What an ``error`` row means: a timeout, a process that died, or a call that raised or
    returned something malformed."""
    message = row.get("message") or ""
    if message.startswith("timed out") or "did not return within" in message:
        return TIMEOUT_ADVICE
    if "killed its process" in message or "process died" in message:
        return KILLED_ADVICE
    return RAISED_ADVICE


def advice(row: dict, chk=None) -> str | None:
    """The line the command line prints under a non-pass row: for a ``fail``, the check's
    hint ("Most likely: ..."); for an ``xfail``, the declared sentence; for a stale declaration,
    what to do about it; for an ``error``, what kind of misbehaviour it was."""
    chk = chk if chk is not None else REGISTRY.get(row["id"])
    status = row["status"]
    if status == "error":
        return error_advice(row)
    if is_stale(row):
        return STALE_ADVICE
    if status == "fail":
        return f"Most likely: {chk.hint}" if chk is not None and chk.hint else None
    if status == "xfail":
        sentence = declared_sentence(row)
        return f"Declared: {sentence}" if sentence else None
    return None


def consequence(row: dict, chk=None) -> str | None:
    """The sentence the Markdown report adds to a non-pass row: what a ``fail`` or ``xfail``
    means for training (the check's consequence); for a stale declaration or an ``error``, what
    happened instead (the consequence belongs only to a property found violated)."""
    chk = chk if chk is not None else REGISTRY.get(row["id"])
    status = row["status"]
    if status == "error":
        return error_advice(row)
    if is_stale(row):
        return STALE_ADVICE
    if status in ("fail", "xfail") and STOPS in (row.get("message") or ""):
        return "Consequence: a run configured with this value stops (the call raises)."
    if status in ("fail", "xfail") and row.get("class") in CLASS_EFFECT:
        return f"Consequence: {CLASS_EFFECT[row['class']]}"
    if status in ("fail", "xfail") and chk is not None and chk.consequence:
        return f"Consequence: {chk.consequence}"
    return None


# --- the report ---------------------------------------------------------------------------------------


class ReportWriteError(OSError):
    """The reports cannot be written where they were asked for (exit status 2). The message is
    one line: ``cannot write reports to DIR: reason``."""


def _reason(path: Path, exc: OSError) -> str:
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a directory"
        if parent.exists():
            break
    return exc.strerror or str(exc)


def check_writable(out_dir: str | Path) -> Path:
    """Create ``out_dir`` (with its parents) and make sure a file can be written in it;
    ``ReportWriteError`` saying why not."""
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".rlconform-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ReportWriteError(f"cannot write reports to {out_dir}: {_reason(path, exc)}") from exc
    return path


def versions(adapter) -> dict:
    out = {"python": platform.python_version()}
    for pkg in ["torch", "rlconform", *sorted(getattr(adapter, "framework", {}) or {})]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


class ReportWriter:
    """Writes ``out_dir/<adapter>.json`` after every row and ``.md`` at the end. ``total`` (the
    number of checks the run will try) lets an incomplete report say how many of them ran.
    ``ReportWriteError`` (an ``OSError``) when the directory cannot be written."""

    def __init__(self, out_dir: str | Path, adapter, seed: int, warnings: list[str] | None = None,
                 framework_defaults: dict | None = None, total: int | None = None):
        self.dir = check_writable(out_dir)
        self.total = total
        self.name = adapter.name
        self.data = {
            "adapter": adapter.name, "versions": versions(adapter), "complete": False,
            "seed": seed, "rlconform_version": refimpl.__version__,
            "contract_version": CONTRACT_VERSION,
            "framework_defaults": dict(framework_defaults or {}),
            "warnings": list(warnings or []),
            "shims": dict(getattr(adapter, "shims", {}) or {}),
            "summary": {s: 0 for s in STATUSES}, "checks": [],
        }
        self.shims = self.data["shims"]
        self._flush()

    @property
    def json_path(self) -> Path:
        return self.dir / f"{self.name}.json"

    @property
    def md_path(self) -> Path:
        return self.dir / f"{self.name}.md"

    def set_framework_defaults(self, defaults: dict, warnings: list[str] = ()):
        """The adapter's framework defaults (computed in the worker once it has started) and
        the warnings about them."""
        self.data["framework_defaults"] = dict(defaults or {})
        self.data["warnings"] += list(warnings)
        self._flush()

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
        text = render_markdown(self.data, self.shims, total=self.total, from_dir=self.dir)
        try:
            self.md_path.write_text(text)
        except OSError as exc:
            raise ReportWriteError(f"cannot write reports to {self.dir}: "
                                   f"{_reason(self.dir, exc)}") from exc

    def _flush(self):
        tmp = self.json_path.with_suffix(".json.tmp")
        try:
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=False))
            os.replace(tmp, self.json_path)
        except OSError as exc:
            raise ReportWriteError(f"cannot write reports to {self.dir}: "
                                   f"{_reason(self.dir, exc)}") from exc


def verdict(data: dict) -> str:
    s = data["summary"]
    if not data.get("complete"):
        return "INCOMPLETE"
    return "CONFORMS" if s.get("fail", 0) == 0 and s.get("error", 0) == 0 else "DOES NOT CONFORM"


def _cell(text, n=160) -> str:
    text = "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= n else text[: n - 1] + "…"


def incomplete_line(data: dict, total: int | None = None) -> str:
    """For a report cut short: how many checks ran, of how many when known."""
    ran = len(data["checks"])
    of = f" of {total}" if total is not None else ""
    return (f"**Incomplete**: {ran}{of} checks ran before the run was interrupted (Ctrl-C or a "
            "killed process); the checks that did not run are missing from this report.")


def _clause_cell(row: dict, chk, from_dir) -> str:
    """``[contract §anchor](link); paper``: a link a reader can follow from the report's
    directory, then the paper."""
    clause = row.get("clause") or ""
    where, _, paper = clause.partition("; ")
    anchor = chk.section if chk is not None else where.partition("#")[2]
    if chk is not None and chk.source:
        paper = chk.source
    if not anchor:
        return _cell(clause, 120)
    try:
        target = contract_doc.link(anchor, from_dir=from_dir)
    except KeyError:
        return _cell(clause, 120)
    if any(ch in target for ch in " ()<>"):
        target = f"<{target}>"
    text = f"[contract §{anchor}]({target})"
    return f"{text}; {_cell(paper, 100)}" if paper else text


#: the order of the sections of non-passes: what needs action first
NONPASS_ORDER = ("fail", "error", "xfail")


def _text(text) -> str:
    """``text`` as one Markdown table cell, whole (a message is never cut)."""
    return "" if text is None else str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers, rows) -> str:
    """A GitHub Markdown table without column padding (long cells stay one line each)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(x) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def what_happened(row: dict) -> str:
    """A non-pass row's message (without its declared sentence, which has its own place), the
    sample, the size of the difference and the note."""
    message = row.get("message") or ""
    if row["status"] == "xfail" and " | declared: " in message:
        message = message.split(" | declared: ", 1)[0]
    parts = [message]
    if row.get("sample"):
        parts.append(f"[sample {row['sample']}]")
    if row.get("expected") is not None or row.get("actual") is not None:
        size = f"expected {_number(row.get('expected'))}, actual {_number(row.get('actual'))}"
        if row.get("abs_err") is not None:
            size += f", abs err {row['abs_err']:.3g}"
        if row.get("rel_err") is not None:
            size += f", rel err {row['rel_err']:.3g}"
        parts.append(f"({size})")
    if row.get("note"):
        parts.append(f"({row['note']})")
    return " ".join(p for p in parts if p)


def what_it_means(row: dict, chk=None) -> str:
    """For a non-pass: the declared sentence or the hint, the consequence, the upstream issue."""
    chk = chk if chk is not None else REGISTRY.get(row["id"])
    said = [advice(row, chk), consequence(row, chk)]
    sentence = row_deviation(row)
    if row["status"] == "xfail" and sentence and not (said[0] or "").endswith(sentence):
        said[0] = f"Declared: {sentence}"
    if row.get("upstream"):
        said.append(f"Upstream: <{row['upstream']}>")
    return " ".join(f"{x.rstrip('.')}." for x in dict.fromkeys(x for x in said if x))


def _nonpass_sections(data: dict, from_dir) -> list[str]:
    """The non-passes, fail then error then xfail (xfail grouped by class, gradient first):
    whole messages, what each means, and the command that reproduces it."""
    rows = [r for r in data["checks"] if r["status"] in NONPASS_ORDER]
    if not rows:
        return ["", "## Not a pass", "", "Every check that ran passed or was skipped."]
    groups = []
    for status in NONPASS_ORDER:
        mine = [r for r in rows if r["status"] == status]
        if status != "xfail":
            groups.append((f"{status} ({len(mine)})", mine))
            continue
        for cls in (*CLASSES, UNCLASSIFIED):
            groups.append((f"xfail, class {cls} ({sum(row_class(r) == cls for r in mine)})",
                           [r for r in mine if row_class(r) == cls]))
    out = ["", f"## Not a pass ({len(rows)})", "",
           "Failures first, then errors, then the declared deviations (xfail) by class: "
           "gradient (training changes), value, padding, validation, precision."]
    for title, mine in groups:
        if not mine:
            continue
        table = []
        for r in mine:
            chk = REGISTRY.get(r["id"])
            table.append([f"`{r['id']}`", _text(what_happened(r)), _text(what_it_means(r, chk)),
                          f"`{reproduce_line(data['adapter'], r['id'], data.get('seed', 0))}`",
                          _text(chk.equation) if chk else "", _clause_cell(r, chk, from_dir)])
        out += ["", f"### {title}", "",
                md_table(["check", "what happened", "what it means", "reproduce",
                                 "equation", "clause"], table)]
    return out


def _qualified_section(data: dict, from_dir) -> list[str]:
    rows = [(r, is_qualified(r)) for r in data["checks"] if is_qualified(r)]
    if not rows:
        return []
    table = [[f"`{r['id']}`", _text(sentence), _clause_cell(r, REGISTRY.get(r["id"]), from_dir)]
             for r, sentence in rows]
    return ["", f"## Unverified passes ({len(rows)})", "",
            "These pass only because the adapter had to shape the input so that the framework's "
            "behaviour cannot show; the pass says nothing about that behaviour.", "",
            md_table(["check", "why unverified", "clause"], table)]


def _pass_section(data: dict, from_dir) -> list[str]:
    rows = [r for r in data["checks"] if r["status"] == "pass" and not is_qualified(r)]
    if not rows:
        return []
    table = [[f"`{r['id']}`", r["kind"], _text(r.get("note") or ""),
              _clause_cell(r, REGISTRY.get(r["id"]), from_dir)] for r in rows]
    return ["", f"## Passes ({len(rows)})", "",
            md_table(["check", "kind", "note", "clause"], table)]


def is_not_provided(row: dict) -> bool:
    """A skip because the adapter does not offer the function at all."""
    return row["status"] == "skip" and (row.get("message") or "").endswith("not provided")


def skip_summary(rows: list[dict]) -> list[str]:
    """Skips in a few lines: how many, which functions are not provided, and every other
    reason (an option the framework cannot express) with its checks."""
    skips = [r for r in rows if r["status"] == "skip"]
    if not skips:
        return []
    absent = list(dict.fromkeys(r["estimator"] for r in skips if is_not_provided(r)))
    n_absent = sum(is_not_provided(r) for r in skips)
    out = [f"{len(skips)} skipped: {n_absent} because the function is not provided"
           + (f" ({', '.join(f'`{e}`' for e in absent)})" if absent else "")
           + f", {len(skips) - n_absent} for another reason"
           + (":" if n_absent < len(skips) else ".")]
    reasons: dict[str, list[str]] = {}
    for r in skips:
        if not is_not_provided(r):
            reasons.setdefault(r.get("message") or "(no reason given)", []).append(r["id"])
    out += [""] if reasons else []
    out += [f"- {_text(reason)}: " + ", ".join(f"`{i}`" for i in ids)
            for reason, ids in reasons.items()]
    return out


def render_markdown(data: dict, shims: dict | None = None, total: int | None = None,
                    from_dir: str | Path | None = None) -> str:
    """The Markdown report of ``data``: the non-passes first (whole messages, what each means,
    the command that reproduces it), then the unverified passes, the passes, the skips in
    summary. ``shims``: the adapter's (default: the report's own ``shims``); ``total``: how many
    checks the run meant to try (an incomplete report says how many of them ran); ``from_dir``:
    the directory the report is written to, which the links to the contract are relative to
    (default: the current one)."""
    shims = shims if shims is not None else data.get("shims")
    s = data["summary"]
    lines = [f"# rlconform certification: `{data['adapter']}`", ""]
    lines.append(f"{verdict(data)}: " + ", ".join(f"{s.get(k, 0)} {k}" for k in STATUSES)
                 + f" (seed {data['seed']}, rlconform {data['rlconform_version']})")
    lines.append("")
    if not data.get("complete"):
        lines += [incomplete_line(data, total), ""]
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    lines += _nonpass_sections(data, from_dir)
    lines += _qualified_section(data, from_dir)
    if data.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in data["warnings"]]
    if shims:
        lines += ["", "## Shims (steps beyond calling conventions)", ""]
        lines += [f"- `{k}`: {v}" for k, v in shims.items()]
    if data.get("framework_defaults"):
        lines += ["", "## Framework defaults", "",
                  tabulate(sorted(data["framework_defaults"].items()), ["setting", "value"],
                           tablefmt="github", missingval="None (no setting)")]
    by_est = {}
    for r in data["checks"]:
        by_est.setdefault(r["estimator"], Counter())[r["status"]] += 1
    lines += ["", "## Summary by estimator", "",
              tabulate([[e] + [c.get(k, 0) for k in STATUSES] for e, c in sorted(by_est.items())],
                       ["estimator", *STATUSES], tablefmt="github")]
    lines += _pass_section(data, from_dir)
    skipped = skip_summary(data["checks"])
    if skipped:
        lines += ["", "## Skips", "", *skipped]
    lines += ["", f"{verdict(data)} · report `{data['adapter']}.json`"]
    return "\n".join(lines) + "\n"


_SHIMS_HEADING = "## Shims (steps beyond calling conventions)"


def _shims_from_markdown(text: str) -> dict:
    """The shims listed in a Markdown report (for a JSON report written before it kept them)."""
    if _SHIMS_HEADING not in text:
        return {}
    block = text.split(_SHIMS_HEADING, 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^- `([^`]+)`: (.*)$", block, flags=re.MULTILINE))


def rerender(json_path: str | Path) -> Path:
    """Write ``<adapter>.md`` beside ``json_path`` again from the JSON report (for instance
    after the Markdown layout changed); the shims come from the JSON, or for an older report
    from the Markdown it replaces. Returns the Markdown's path."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text(encoding="utf-8"))
    md_path = json_path.with_suffix(".md")
    shims = data.get("shims")
    if shims is None and md_path.is_file():
        shims = _shims_from_markdown(md_path.read_text(encoding="utf-8"))
    md_path.write_text(render_markdown(data, shims, from_dir=json_path.parent))
    return md_path
