"""Reports a person reads (issue 10, sections 3-5): the per-adapter Markdown puts the non-passes
first with whole messages, hints and reproduce lines; the comparison opens with the findings that
change training, one finding per declared sentence, then a framework x estimator grid small
enough to read; the README's table is generated from the findings. Synthetic report dicts carry
the row fields ``class``, ``deviation``, ``upstream`` and ``qualified``; rows without them (the
reports written before) still work."""

import json
import re
from pathlib import Path

import pytest

from conformance.checks import all_checks
from conformance.registry import REGISTRY, STATUSES

ROOT = Path(__file__).resolve().parents[1]
all_checks(thorough=True)

LONG = ("the per-token loss differs at token 3 " + "because the framework normalises by the "
        "number of tokens of the longest row rather than of its own row, " * 4).strip()
TRL_SENTENCE = ("with use_bias_correction_kl=True the KL term is k3 * exp(logp - old_logp) "
                "(trl/trainer/grpo_trainer.py:3104-3105, :3120, trl 1.16.0)")
PAD_SENTENCE = ("multiplies by the mask, so NaN at a padded position reaches the result "
                "(trl/trainer/grpo_trainer.py:3153, trl 1.16.0)")
URL = "https://github.com/huggingface/trl/issues/1"


def _row(check_id, status, message="", **extra):
    chk = REGISTRY[check_id]
    row = {"id": check_id, "estimator": chk.estimator, "kind": chk.kind, "status": status,
           "message": message, "seconds": 0.01, "clause": chk.clause, "dtype": "float64",
           "sample": "s0" if status != "pass" else None, "expected": None, "actual": None,
           "abs_err": None, "rel_err": None, "note": None, "class": None, "deviation": None,
           "upstream": None, "qualified": None}
    row.update(extra)
    return row


def _report(adapter, rows, seed=0, version="1.16.0"):
    return {"adapter": adapter, "versions": {"python": "3.11", "torch": "2", "trl": version},
            "complete": True, "seed": seed, "rlconform_version": "0.1.0",
            "contract_version": "1.1", "framework_defaults": {}, "warnings": [],
            "summary": {s: sum(r["status"] == s for r in rows) for s in STATUSES},
            "checks": rows}


def _declared(check_id, cls, sentence, measured="values differ", **extra):
    return _row(check_id, "xfail", f"{measured} | declared: {sentence}", deviation=sentence,
                **{"class": cls, **extra})


def _trl_reports():
    """Two TRL variants sharing a gradient-class declaration over two checks, a padding one, a
    value one; a qualified pass; skips of both kinds."""
    grad = dict(expected=2.91908, actual=1.40263, abs_err=1.51645, rel_err=0.519496,
                upstream=URL)
    common = [
        _declared("kl_estimate/gradient-matches-reference", "gradient", TRL_SENTENCE, **grad),
        _declared("kl_estimate/exact-loss-gradients", "gradient", TRL_SENTENCE,
                  expected=0.33864, actual=0.454733, abs_err=0.116093, rel_err=0.116093),
        _declared("aggregate/padding-nan", "padding", PAD_SENTENCE),
        _declared("policy_gradient_loss/matches-reference", "value",
                  "the value is -A, not -A logp (trl/trainer/grpo_trainer.py:3066, trl 1.16.0)"),
        _row("dpo_loss/matches-reference", "pass", qualified="one-token completions hide the "
             "length normalisation", note="qualified: one-token completions hide the length "
             "normalisation"),
        _row("gae/matches-reference", "skip", "gae not provided"),
        _row("ppo_clip_loss/matches-reference", "skip", "unsupported: no dual clip in this loss"),
    ]
    return [_report("trl", [dict(r) for r in common]),
            _report("trl-grpo", [dict(r) for r in common])]


def _verl_report():
    """A framework with an undeclared fail and an error (which committed reports never have)."""
    return _report("verl", [
        _row("gae/matches-reference", "fail", "gae[0, 1] = 2, but should be 1",
             expected=1.0, actual=2.0, abs_err=1.0, rel_err=1.0, **{"class": "gradient"}),
        _row("discounted_returns/matches-reference", "error", "RuntimeError: boom"),
        _row("kl_estimate/rejects-mixed-float-dtypes", "xfail", "accepted | declared: no dtype "
             "check (verl/trainer/ppo/core_algos.py:1500, verl 0.9.1)",
             deviation="no dtype check (verl/trainer/ppo/core_algos.py:1500, verl 0.9.1)",
             **{"class": "validation"}),
    ], version="0.9.1")


# --- the JSON schema ---------------------------------------------------------------------------------

def test_schema_has_the_four_row_fields_and_both_copies_are_identical():
    from conformance.compare import ReportError, validate_report

    assert (ROOT / "docs" / "report.schema.json").read_bytes() == (
        ROOT / "conformance" / "report.schema.json").read_bytes()
    props = json.loads((ROOT / "docs" / "report.schema.json").read_text())["$defs"]["row"][
        "properties"]
    assert set(props["class"]["enum"]) == {"gradient", "value", "padding", "validation",
                                           "precision", None}
    for report in _trl_reports():
        validate_report(report)
    for field, bad in (("class", "cosmetic"), ("deviation", 3), ("upstream", ["u"]),
                       ("qualified", {"a": 1})):
        report = _trl_reports()[0]
        report["checks"][0][field] = bad
        with pytest.raises(ReportError, match=re.escape(f"$.checks[0].{field}")):
            validate_report(report)


# --- the per-adapter Markdown ------------------------------------------------------------------------

def _adapter_markdown():
    from conformance.report import render_markdown
    rows = [_row("gae/matches-reference", "pass"),
            _declared("aggregate/padding-nan", "padding", PAD_SENTENCE),
            _declared("kl_estimate/rejects-mixed-float-dtypes", "validation", "no dtype check"),
            _declared("kl_estimate/gradient-matches-reference", "gradient", TRL_SENTENCE,
                      upstream=URL),
            _row("discounted_returns/matches-reference", "error", "RuntimeError: boom"),
            _declared("policy_gradient_loss/matches-reference", "value", "value -A"),
            _row("value_loss/matches-reference", "fail", LONG, **{"class": "gradient"}),
            _row("dpo_loss/matches-reference", "pass", qualified="one-token completions hide it"),
            _row("sequence_logprob/matches-reference", "skip", "sequence_logprob not provided"),
            _row("ppo_clip_loss/matches-reference", "skip", "unsupported: no dual clip here")]
    return rows, render_markdown(_report("acme", rows, seed=7))


def test_markdown_lists_non_passes_first_fail_error_then_xfail_by_class():
    rows, md = _adapter_markdown()
    at = {r["id"]: md.index(f"`{r['id']}`") for r in rows if r["status"] != "skip"}
    by_id = {r["id"]: r for r in rows}
    order = sorted((i for i in at if by_id[i]["status"] != "pass"), key=at.get)
    statuses = [by_id[i]["status"] for i in order]
    assert statuses == ["fail", "error", "xfail", "xfail", "xfail", "xfail"], statuses
    classes = [by_id[i]["class"] for i in order if by_id[i]["status"] == "xfail"]
    assert classes == ["gradient", "value", "padding", "validation"], classes
    first_pass = min(at[i] for i in at if by_id[i]["status"] == "pass")
    assert max(at[i] for i in order) < first_pass, "a pass is listed before a non-pass"


def test_markdown_gives_whole_messages_hints_reproduce_lines_and_upstream():
    rows, md = _adapter_markdown()
    fail = next(r for r in rows if r["status"] == "fail")
    assert LONG in md, "a long message was cut"
    hint = REGISTRY[fail["id"]].hint
    assert f"Most likely: {hint}" in md, "the fail's hint is missing"
    for r in rows:
        if r["status"] in ("fail", "error", "xfail"):
            line = next(ln for ln in md.splitlines() if f"`{r['id']}`" in ln)
            assert f"rlconform certify acme --out reproduce -k {r['id']} --seed 7" in line, line
    assert URL in md, "the upstream link is missing"


def test_reproduce_line_is_the_one_the_command_line_prints():
    from conformance.cli import parser, reproduce_command
    from conformance.report import reproduce_line
    thorough = next(c for c in all_checks(thorough=True) if c.thorough)
    for chk, seed in ((REGISTRY["gae/matches-reference"], 0), (thorough, 3)):
        args = parser().parse_args(["certify", "acme", "--out", ".", "--seed", str(seed)])
        assert reproduce_line("acme", chk.id, seed) == reproduce_command({"id": chk.id}, args)


def test_markdown_lists_qualified_passes_as_unverified_and_summarises_skips():
    rows, md = _adapter_markdown()
    assert "## Unverified passes" in md
    section = md.split("## Unverified passes", 1)[1].split("\n## ", 1)[0]
    assert "`dpo_loss/matches-reference`" in section and "one-token completions hide it" in section
    skips = md.split("## Skips", 1)[1]
    assert "2 skipped" in skips and "`sequence_logprob`" in skips
    assert "unsupported: no dual clip here" in skips, "a reason other than not provided is lost"
    assert "- sequence_logprob not provided" not in md and "`sequence_logprob/matches-reference`" \
        not in md, "a not-provided skip should be counted, not listed"


def test_old_rows_without_the_new_fields_show_as_unclassified_with_their_declaration():
    from conformance.report import render_markdown
    row = _declared("aggregate/padding-nan", None, PAD_SENTENCE)
    for field in ("class", "deviation", "upstream", "qualified"):
        row.pop(field)
    md = render_markdown(_report("acme", [row]))
    assert "xfail, class unclassified (1)" in md
    assert f"Declared: {PAD_SENTENCE}" in md


def test_rerender_rewrites_the_markdown_from_the_json_keeping_the_shims(tmp_path):
    from conformance.report import rerender
    rows, _ = _adapter_markdown()
    path = tmp_path / "acme.json"
    path.write_text(json.dumps(_report("acme", rows)))
    (tmp_path / "acme.md").write_text("# old\n\n## Shims (steps beyond calling conventions)\n\n"
                                      "- `gae`: sorts the rows (acme/x.py:3)\n\n## Checks\n")
    md = rerender(path).read_text()
    assert md.startswith("# rlconform certification: `acme`")
    assert "- `gae`: sorts the rows (acme/x.py:3)" in md, "the shims were lost"
    assert LONG in md


# --- findings ----------------------------------------------------------------------------------------

def test_one_finding_per_declared_sentence_folding_checks_and_variants():
    from conformance.findings import findings
    found = findings(_trl_reports() + [_verl_report()])
    trl = [f for f in found if f.framework == "trl"]
    assert [f.cls for f in trl] == ["gradient", "value", "padding"], [f.cls for f in trl]
    grad = trl[0]
    assert grad.sentence == TRL_SENTENCE
    assert grad.check_ids == ["kl_estimate/gradient-matches-reference",
                              "kl_estimate/exact-loss-gradients"]
    assert grad.adapters() == ["trl", "trl-grpo"]
    assert grad.locations == ["trl/trainer/grpo_trainer.py:3104-3105",
                              "trl/trainer/grpo_trainer.py:3120"]
    assert grad.upstream == [URL]
    verl = [f for f in found if f.framework == "verl"]
    assert [(f.kind, f.cls) for f in verl] == [("undeclared", "gradient"),
                                               ("declared", "validation"),
                                               ("error", "unclassified")]


def test_findings_of_old_reports_take_the_sentence_from_the_message():
    from conformance.findings import findings
    old = _trl_reports()[0]
    for row in old["checks"]:
        for field in ("class", "deviation", "upstream", "qualified"):
            row.pop(field)
    found = findings([old])
    assert {f.cls for f in found} == {"unclassified"}
    assert TRL_SENTENCE in {f.sentence for f in found}


# --- comparison.md, comparison-matrix.md, comparison.png, comparison.json -----------------------------

@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from conformance.compare import compare
    tmp = tmp_path_factory.mktemp("cmp")
    paths = []
    for report in [_report("refimpl", [_row("gae/matches-reference", "pass")]),
                   *_trl_reports(), _verl_report()]:
        path = tmp / f"{report['adapter']}.json"
        path.write_text(json.dumps(report))
        paths.append(path)
    out = tmp / "out"
    script = out / "repro" / "trl" / "kl_estimate__gradient-matches-reference.py"
    script.parent.mkdir(parents=True)
    script.write_text("print('difference')\n")
    data = compare(paths, out)
    return out, data


def test_comparison_opens_with_the_gradient_findings_per_framework(compared):
    out, _ = compared
    md = (out / "comparison.md").read_text()
    headings = re.findall(r"^##+ .*$", md, flags=re.MULTILINE)
    assert headings[0].startswith("## What changes training"), headings[:3]
    assert headings[1:3] == ["### TRL", "### verl"], headings[:4]
    first = md.index(TRL_SENTENCE)
    assert first < md.index(PAD_SENTENCE) and first < md.index("## Framework × estimator")


def test_a_finding_says_equation_size_effect_where_upstream_and_reproduction(compared):
    from conformance.findings import EFFECT
    out, _ = compared
    md = (out / "comparison.md").read_text()
    block = md.split(TRL_SENTENCE, 1)[1].split("\n- **", 1)[0]
    assert md.count(TRL_SENTENCE) == 1, "one finding per declared sentence"
    assert "`kl_estimate/gradient-matches-reference` (`trl`, `trl-grpo`)" in block
    assert "`kl_estimate/exact-loss-gradients`" in block
    assert REGISTRY["kl_estimate/gradient-matches-reference"].equation in block
    assert "expected 2.91908, actual 1.40263, abs err 1.52, rel err 0.519" in block
    assert EFFECT["gradient"] in block and "Training changes" in EFFECT["gradient"]
    assert "`trl/trainer/grpo_trainer.py:3104-3105`" in block
    assert f"<{URL}>" in block
    link = "repro/trl/kl_estimate__gradient-matches-reference.py"
    assert f"[{link}]({link})" in block
    assert "repro/" not in md.split(PAD_SENTENCE, 1)[1].split("\n- **", 1)[0], (
        "a link to a reproduction that does not exist")


def test_comparison_lists_undeclared_fails_and_errors(compared):
    out, _ = compared
    md = (out / "comparison.md").read_text()
    assert "(undeclared fail)" in md and "gae[0, 1] = 2, but should be 1" in md
    assert "(error)" in md and "RuntimeError: boom" in md


def test_comparison_grid_and_picture_readable_at_normal_size(compared):
    from PIL import Image
    out, _ = compared
    md = (out / "comparison.md").read_text()
    grid = md.split("## Framework × estimator", 1)[1].split("\n## ", 1)[0]
    kl = next(ln for ln in grid.splitlines() if ln.startswith("| `kl_estimate`"))
    assert kl == "| `kl_estimate` | — | **gradient** 1 | **validation** 1 |"
    assert "![framework x estimator](comparison.png)" in grid
    width, height = Image.open(out / "comparison.png").size
    assert width <= 1400 and height <= 1000, (width, height)


def test_full_matrix_goes_to_its_own_file_and_json_keeps_it_with_findings(compared):
    out, data = compared
    matrix = (out / "comparison-matrix.md").read_text()
    assert "| `kl_estimate/gradient-matches-reference` | — | xfail | xfail | — |" \
        in matrix
    assert "| check |" not in (out / "comparison.md").read_text()
    saved = json.loads((out / "comparison.json").read_text())
    assert saved == data and set(saved) >= {"adapters", "summaries", "complete", "checks",
                                            "findings"}
    grad = next(f for f in saved["findings"] if f["sentence"] == TRL_SENTENCE)
    assert grad["class"] == "gradient" and grad["framework"] == "trl"
    assert grad["repro"] == ["repro/trl/kl_estimate__gradient-matches-reference.py"]


def test_comparison_skips_say_counts_and_only_other_reasons(compared):
    out, _ = compared
    md = (out / "comparison.md").read_text()
    assert "not provided" not in md.replace("because the function is not provided", "").replace(
        "—: not provided", ""), "a not-provided skip is listed"
    assert "unsupported: no dual clip in this loss" in md


# --- the README's table ------------------------------------------------------------------------------

def test_readme_table_is_generated_between_markers(tmp_path):
    from conformance.findings import README_END, README_START, main, readme_table
    reports = _trl_reports() + [_verl_report()]
    table = readme_table(reports)
    lines = table.splitlines()
    assert len(lines) == 4 and lines[2].startswith("| TRL 1.16.0 | `trl`, `trl-grpo` | "
                                                   "1 gradient, 1 value, 1 padding |")
    assert "**gradient**: with use_bias_correction_kl=True" in lines[2]
    assert lines[3].startswith("| verl 0.9.1 | `verl` | 1 gradient, 1 validation, 1 unclassified |")
    paths = []
    for report in reports:
        paths.append(tmp_path / f"{report['adapter']}.json")
        paths[-1].write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{README_START}\nold table\n{README_END}\n\nafter\n")
    assert main(["--readme", str(readme), *map(str, paths)]) == 0
    assert readme.read_text() == f"intro\n\n{README_START}\n{table}\n{README_END}\n\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="readme"):
        main(["--readme", str(readme), *map(str, paths)])


def test_a_gradient_finding_only_through_constants_says_training_is_unchanged():
    """No gradient through the returns (torch.no_grad): the values are the contract's, and an
    RL update never differentiates through them; a KL estimate's gradient is another matter."""
    from conformance.findings import findings
    no_grad = "computes under torch.no_grad (x.py:1)"
    rows = [_declared("discounted_returns/gradient-matches-reference", "gradient", no_grad),
            _declared("kl_estimate/gradient-matches-reference", "gradient", TRL_SENTENCE)]
    found = {f.sentence: f for f in findings([_report("trl", rows)])}
    assert "never takes" in found[no_grad].effect
    assert found[TRL_SENTENCE].effect.startswith("Training changes")


def test_the_grid_marks_an_estimator_whose_passes_are_unverified():
    from conformance.compare import _grid_cell, estimator_grid
    rows = [_row("dpo_loss/matches-reference", "pass", qualified="one pair per call (x.py:1)"),
            _row("ipo_loss/matches-reference", "pass")]
    grid = estimator_grid([_report("trl", rows)], [])
    assert _grid_cell(grid["trl"]["dpo_loss"]) == "pass (some unverified)"
    assert _grid_cell(grid["trl"]["ipo_loss"]) == "pass"
