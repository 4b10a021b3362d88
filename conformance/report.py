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


def render_markdown(data: dict, shims: dict | None = None, total: int | None = None,
                    from_dir: str | Path | None = None) -> str:
    """The Markdown report of ``data``. ``total``: how many checks the run meant to try (an
    incomplete report says how many of them ran); ``from_dir``: the directory the report is
    written to, which the links to the contract are relative to (default: the current one)."""
    s = data["summary"]
    lines = [f"# rlconform certification: `{data['adapter']}`", ""]
    lines.append(f"{verdict(data)}: " + ", ".join(f"{s.get(k, 0)} {k}" for k in STATUSES)
                 + f" (seed {data['seed']}, rlconform {data['rlconform_version']})")
    lines.append("")
    if not data.get("complete"):
        lines += [incomplete_line(data, total), ""]
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()))
    if data.get("framework_defaults"):
        lines += ["", "## Framework defaults", "",
                  tabulate(sorted(data["framework_defaults"].items()), ["setting", "value"],
                           tablefmt="github", missingval="None (no setting)")]
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
        detail = _cell(detail)
        said = consequence(r, chk)
        if said:                                    # never cut: it is what the row means
            detail = f"{detail} {_cell(said, 10_000)}." if detail else f"{_cell(said, 10_000)}."
        rows.append([r["status"], f"`{r['id']}`", r["estimator"], r["kind"], detail,
                     _cell(chk.equation if chk else "", 120), _clause_cell(r, chk, from_dir)])
    lines += ["", "## Checks", "",
              tabulate(rows, ["status", "check", "estimator", "kind", "message", "equation",
                              "clause"], tablefmt="github"), ""]
    lines.append(f"{verdict(data)} · report `{data['adapter']}.json`")
    return "\n".join(lines) + "\n"
