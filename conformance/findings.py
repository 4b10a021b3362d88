"""Findings: the non-passes of certification reports, folded into what a reader acts on.

One finding is one declared sentence (a ``known_deviations`` entry) of one framework: every check
id and every variant (adapter) that carries the same sentence is listed under it, since they are
one behaviour of the framework seen by several checks (padding read by a multiplication mask
shows in every loss). A ``fail`` or ``error`` that no declaration explains is a finding of its
own, keyed by its check id. Findings are ranked by class (docs/contract.md, "The JSON
report"): ``gradient`` (training changes), ``value``, ``padding``, ``validation``,
``precision``; a row written before classes existed is "unclassified" and ranks last.

Adapter names fold to their framework by the part before the first "-" (``trl-grpo`` is
``trl``). The README's table "What the frameworks do differently" is generated here::

    python -m conformance.findings --readme README.md reports/*.json

rewrites the text between ``<!-- findings-table:start -->`` and ``<!-- findings-table:end -->``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from conformance.report import (CLASS_EFFECT, CLASSES, STOPS, UNCLASSIFIED, is_qualified, is_stale, repro_path,
                                row_class, row_deviation)

RANK = {c: i for i, c in enumerate((*CLASSES, UNCLASSIFIED))}

EFFECT = {**CLASS_EFFECT, UNCLASSIFIED: ("Not classified: the report was written before non-passes "
                                         "carried a class; see the check's consequence.")}
#: the functions whose outputs an RL update uses as constants (advantages, returns, rewards)
CONSTANTS = frozenset({"discounted_returns", "gae", "group_normalized_advantages",
                       "leave_one_out_advantages", "batch_normalized_advantages",
                       "kl_penalized_rewards"})
#: added to a validation finding about masks with holes
HOLES = ("A mask with holes is a legitimate multi-turn mask (tool output between turns) in some "
         "frameworks; there it is a feature, not a mistake.")

README_START = "<!-- findings-table:start -->"
README_END = "<!-- findings-table:end -->"

#: ``path/to/file.py:123`` or ``:123-130``, with following ``, :456`` shorthands for the same file
_LOCATION = re.compile(r"([\w./-]+\.py):(\d+(?:-\d+)?)((?:,\s*:\d+(?:-\d+)?)*)")

#: display names of the bundled frameworks (their package names are in the reports' versions)
NAMES = {"trl": "TRL", "verl": "verl", "openrlhf": "OpenRLHF", "torchrl": "torchrl",
         "liger": "Liger Kernel", "skyrl": "skyrl-train", "refimpl": "refimpl"}


def framework_of(adapter: str) -> str:
    """The framework an adapter belongs to: its name up to the first "-"."""
    return adapter.split("-", 1)[0]


def locations(sentence: str) -> list[str]:
    """The framework's ``file.py:line`` places a declared sentence cites, in order; a
    ``, :456`` shorthand after a place names the same file."""
    found = []
    for m in _LOCATION.finditer(sentence or ""):
        path = m.group(1)
        found.append(f"{path}:{m.group(2)}")
        found += [f"{path}:{extra.strip(', :')}" for extra in m.group(3).split(",")
                  if extra.strip()]
    return list(dict.fromkeys(found))


@dataclass
class Finding:
    """One declared sentence of one framework (or one undeclared fail/error), with every
    (adapter, row) that carries it."""
    framework: str
    kind: str                               # "declared", "stale", "undeclared" or "error"
    sentence: str
    rows: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def cls(self) -> str:
        """The most serious class among its rows (gradient first)."""
        return min((row_class(r) for _, r in self.rows), key=RANK.__getitem__)

    @property
    def check_ids(self) -> list[str]:
        return list(dict.fromkeys(r["id"] for _, r in self.rows))

    @property
    def estimators(self) -> list[str]:
        return list(dict.fromkeys(r["estimator"] for _, r in self.rows))

    def adapters(self, check_id: str | None = None) -> list[str]:
        return list(dict.fromkeys(a for a, r in self.rows if check_id in (None, r["id"])))

    @property
    def locations(self) -> list[str]:
        return locations(self.sentence) if self.kind in ("declared", "stale") else []

    @property
    def upstream(self) -> list[str]:
        return list(dict.fromkeys(r["upstream"] for _, r in self.rows if r.get("upstream")))

    @property
    def effect(self) -> str:
        """What the finding does to a training run: its class's sentence (for an unclassified
        finding, the consequences its checks state)."""
        if self.cls == UNCLASSIFIED:
            from conformance.registry import REGISTRY
            said = [REGISTRY[c].consequence for c in self.check_ids
                    if c in REGISTRY and REGISTRY[c].consequence]
            text = " ".join(f"{s.rstrip('.')}." for s in dict.fromkeys(said))
            return text or EFFECT[UNCLASSIFIED]
        text = EFFECT[self.cls]
        if self.cls == "gradient" and all(r.get("kind") == "gradient" and r["estimator"] in CONSTANTS
                                          for _, r in self.rows):
            text = ("The values are the contract's; only their gradient differs, which an RL update "
                    "never takes (advantages, returns and shaped rewards enter the loss as "
                    "constants): it matters only to code that differentiates through "
                    + ", ".join(f"`{e}`" for e in self.estimators) + ".")
        if any(STOPS in (r.get("message") or "") for _, r in self.rows):
            text = ("Training stops: the framework raises on a value the contract allows, so a "
                    "run configured with it cannot start.")
        if self.cls == "validation" and any("hole" in c for c in self.check_ids):
            text = f"{text} {HOLES}"
        return text

    def sample_row(self, check_id: str) -> dict:
        """The row of ``check_id`` that best shows the size of the difference (one with
        numbers if any)."""
        rows = [r for _, r in self.rows if r["id"] == check_id]
        return next((r for r in rows if r.get("abs_err") is not None),
                    next((r for r in rows if r.get("expected") is not None), rows[0]))

    def to_json(self, repro_dir: Path | None = None) -> dict:
        return {"framework": self.framework, "class": self.cls, "kind": self.kind,
                "sentence": self.sentence, "locations": self.locations,
                "upstream": self.upstream,
                "checks": [{"id": c, "adapters": self.adapters(c)} for c in self.check_ids],
                "repro": self.repro_links(repro_dir) if repro_dir is not None else []}

    def repro_links(self, out_dir: Path) -> list[str]:
        """The reproduction scripts (relative to ``out_dir``) that exist, one per check id."""
        links = []
        for check_id in self.check_ids:
            for adapter in self.adapters(check_id):
                rel = repro_path(adapter, check_id)
                if (Path(out_dir) / rel).is_file():
                    links.append(rel)
                    break
        return links


def framework_order(name: str) -> tuple:
    """refimpl first, then alphabetical."""
    return (name != "refimpl", name)


def findings(reports: list[dict]) -> list[Finding]:
    """Every finding of ``reports``: by framework (refimpl first), then class (gradient first),
    then the first check id."""
    by_key: dict[tuple, Finding] = {}
    for report in reports:
        adapter = report["adapter"]
        fw = framework_of(adapter)
        for row in report["checks"]:
            if row["status"] not in ("fail", "xfail", "error"):
                continue
            sentence = row_deviation(row)
            if row["status"] == "error":
                kind, text = "error", f"{row['id']}: {row.get('message') or ''}"
            elif sentence is None:
                kind, text = "undeclared", f"{row['id']}: {row.get('message') or ''}"
            else:
                kind, text = ("stale" if is_stale(row) else "declared"), sentence
            key = (fw, kind, text if kind in ("declared", "stale") else row["id"])
            by_key.setdefault(key, Finding(fw, kind, text)).rows.append((adapter, row))
    return sorted(by_key.values(), key=lambda f: (framework_order(f.framework), RANK[f.cls],
                                                  f.kind != "undeclared", f.check_ids[0]))


def qualified_passes(reports: list[dict]) -> dict[tuple[str, str], list]:
    """{(framework, sentence): [(adapter, row), ...]} for the passes listed as unverified."""
    out: dict[tuple[str, str], list] = {}
    for report in reports:
        for row in report["checks"]:
            sentence = is_qualified(row)
            if sentence:
                out.setdefault((framework_of(report["adapter"]), sentence), []).append(
                    (report["adapter"], row))
    return out


# --- the README's table ---------------------------------------------------------------------------

def _version(reports: list[dict]) -> str:
    """The framework's pinned version as its reports give it (the package that is neither
    python, torch nor rlconform)."""
    for report in reports:
        for pkg, ver in report.get("versions", {}).items():
            if pkg not in ("python", "torch", "rlconform", "tensordict") and ver:
                return ver
    return ""


def short(sentence: str, n: int = 110) -> str:
    """A declared sentence without its file:line parenthesis, cut at its first clause."""
    text = re.sub(r"\s*\([^()]*\.py:[^()]*\)\s*$", "", sentence or "").strip()
    text = re.split(r";\s|:\s(?=[a-z])", text, maxsplit=1)[0].rstrip(" .,")
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def _what_differs(mine: list[Finding]) -> str:
    """One README cell: what changes training (the gradient-class findings, then the value-class
    ones), each named by its first clause; the other classes are counted in the findings column
    and told in full in reports/comparison.md."""
    parts = []
    for cls in ("gradient", "value", UNCLASSIFIED):
        items = list(dict.fromkeys(short(f.sentence) for f in mine if f.cls == cls))
        if items:
            parts.append(f"**{cls}**: " + "; ".join(items))
    return "<br>".join(p.replace("|", "\\|") for p in parts) or "nothing that changes training"


def readme_table(reports: list[dict]) -> str:
    """The README's table "What the frameworks do differently": per framework (refimpl left
    out) its version, its variants, how many findings of each class, and what differs, gradient
    class first."""
    fws: dict[str, list[dict]] = {}
    for report in sorted(reports, key=lambda r: (framework_order(framework_of(r["adapter"])),
                                                 r["adapter"])):
        fws.setdefault(framework_of(report["adapter"]), []).append(report)
    all_findings = findings(reports)
    lines = ["| framework (version) | variants | findings | what changes training (gradient, then value) |",
             "|---|---|---|---|"]
    for fw, reps in fws.items():
        if fw == "refimpl":
            continue
        mine = [f for f in all_findings if f.framework == fw]
        counts = {c: sum(f.cls == c for f in mine) for c in RANK}
        by_class = ", ".join(f"{counts[c]} {c}" for c in RANK if counts[c]) or "none"
        name = f"{NAMES.get(fw, fw)} {_version(reps)}".strip()
        variants = ", ".join(f"`{r['adapter']}`" for r in reps)
        lines.append(f"| {name} | {variants} | {by_class} | {_what_differs(mine)} |")
    return "\n".join(lines)


def rewrite_readme(readme: Path, reports: list[dict]) -> bool:
    """Replace the table between the markers in ``readme``; True when the file changed.
    ``ValueError`` when the markers are missing."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"readme: {readme} has no {README_START} ... {README_END} markers")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{readme_table(reports)}\n{README_END}{tail}"
    if new != text:
        readme.write_text(new)
    return new != text


def load_reports(paths) -> list[dict]:
    """The certification reports among ``paths``, in order (a comparison.json, which has no
    ``adapter``, is skipped). ``rlconform compare`` validates reports against their schema;
    this reader trusts them."""
    reports = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    return [r for r in reports if isinstance(r, dict) and "adapter" in r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.findings",
                                description="Print the findings table, or rewrite it in a README.")
    p.add_argument("reports", nargs="+", help="certification reports (reports/*.json)")
    p.add_argument("--readme", help="rewrite the table between the markers in this file")
    args = p.parse_args(argv)
    reports = load_reports(args.reports)
    if args.readme:
        changed = rewrite_readme(Path(args.readme), reports)
        print(f"{args.readme}: {'rewritten' if changed else 'unchanged'}")
    else:
        print(readme_table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
