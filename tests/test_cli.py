"""The command line, the pytest plugin and adapter loading as a new user meets them: every
mistake the user can make is one line and a usage exit status (never a traceback), every line
the tool prints can be acted on (a "Reproduce:" command that works as printed, what each kind
of non-pass row means), Ctrl-C leaves reports marked incomplete, and compare refuses a file
that is not a report (docs/contract.md, "Naming an adapter", "Certification and statuses",
"The JSON report")."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from importlib.metadata import version as dist_version
from pathlib import Path
from types import ModuleType

import pytest

from conformance import contract_doc
from conformance.checks import all_checks
from conformance.cli import main, parser
from conformance.install import FRAMEWORKS, GROUPS
from conformance.loading import AdapterLoadError, load_adapter
from conformance.registry import REGISTRY
from conformance.runner import certify
from tests import broken_adapters, mutants

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RLCONFORM = BIN / "rlconform"
REFIMPL = load_adapter("refimpl")
N_DPO = len(all_checks("dpo_loss/*"))


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err, f"a traceback reached the user:\n{err}"
    return lines[0]


def _env() -> dict:
    """The test's environment with this interpreter's bin first on PATH (so `rlconform` in a
    printed command is this project's)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


# --- 1. a -k glob that matches nothing -----------------------------------------------------------

@pytest.mark.parametrize("glob,close", [("no_such*", None), ("dpo_los/*", "dpo_loss/*"),
                                        ("gae", "gae/*")])
def test_certify_with_a_glob_that_matches_nothing_is_a_usage_error(tmp_path, capsys, glob, close):
    rc = main(["certify", "refimpl", "--out", str(tmp_path / "out"), "-k", glob, "-q",
               "--in-process"])
    captured = capsys.readouterr()
    assert rc == 2, f"-k {glob!r} selects no check: exit status should be 2, got {rc} ({captured.out})"
    assert "CONFORMS" not in captured.out, f"an empty run was reported as conforming: {captured.out}"
    line = _one_line(captured.err)
    assert glob in line, f"the message should name the glob {glob!r}: {line}"
    if close:
        assert close in line, f"the message should suggest {close!r}: {line}"
    assert not (tmp_path / "out" / "refimpl.json").exists(), "a report was written for no check"


def test_list_with_a_glob_that_matches_nothing_is_a_usage_error(capsys):
    rc = main(["list", "-k", "ppo_clip_los/*"])
    captured = capsys.readouterr()
    assert rc == 2, f"`rlconform list -k` selecting nothing should exit 2, got {rc}"
    line = _one_line(captured.err)
    assert "ppo_clip_los/*" in line and "ppo_clip_loss/*" in line, (
        f"the message should name the glob and the close match ppo_clip_loss/*: {line}")


def _pytest(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args,
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


def test_plugin_glob_that_matches_nothing_is_a_usage_error(tmp_path):
    proc = _pytest(tmp_path, "--rlconform-adapter", "refimpl", "--rlconform-k", "no_such*")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, f"pytest should end in a usage error (4), got {proc.returncode}:\n{out}"
    assert "no_such*" in out and "INTERNALERROR" not in out, out


# --- 2. the Reproduce: line -----------------------------------------------------------------------

def test_reproduce_line_is_a_command_that_works_as_printed(tmp_path, capsys):
    out = tmp_path / "my reports"                    # a space: the line must quote it
    check_id = "bradley_terry_loss/matches-reference"
    rc = main(["certify", "tests.broken_adapters:listy", "--out", str(out), "-q", "-k",
               "bradley_terry_loss/*", "--in-process"])
    assert rc == 1
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines()
             if ln.strip().startswith("Reproduce:")]
    assert lines, "no Reproduce: line under the error rows"
    line = next((ln for ln in lines if check_id in ln), None)
    assert line is not None, f"no Reproduce: line for {check_id}: {lines}"
    command = line.split("Reproduce:", 1)[1].strip()
    again = out / "reproduce"                       # the full report is not overwritten
    assert shlex.split(command) == ["rlconform", "certify", "tests.broken_adapters:listy",
                                    "--out", str(again), "-k", check_id], (
        f"the Reproduce: line should repeat the spec as typed, --out and -k: {command}")
    full = (out / "broken-list.json").read_text()
    proc = subprocess.run(command + " -q", shell=True, cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, f"the printed command did not run the check: {proc.stderr}"
    rows = json.loads((again / "broken-list.json").read_text())["checks"]
    assert [(r["id"], r["status"]) for r in rows] == [(check_id, "error")], rows
    assert (out / "broken-list.json").read_text() == full, "the reproduction overwrote the report"


# --- 3. an --out that cannot be written ------------------------------------------------------------

@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_out_that_cannot_be_written_is_one_line_and_exit_2_before_any_check(tmp_path, capsys,
                                                                            monkeypatch, where):
    import conformance.runner

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = blocker if where == "a file" else blocker / "reports"

    def must_not_run(*args, **kwargs):
        raise AssertionError("certify ran although --out cannot be written")
    monkeypatch.setattr(conformance.runner, "certify", must_not_run)
    rc = main(["certify", "refimpl", "--out", str(out), "-k", "dpo_loss/*", "-q"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, f"an unwritable --out should exit 2, got {rc}"
    assert line.startswith(f"rlconform: cannot write reports to {out}: "), line


def test_report_writer_says_why_it_cannot_write(tmp_path):
    from conformance.report import ReportWriter
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"cannot write reports to .*blocker.*: .*not a directory"):
        ReportWriter(blocker / "reports", REFIMPL, seed=0)


# --- 4. Ctrl-C ------------------------------------------------------------------------------------

def _interrupt(spec: str, report: Path, ready) -> tuple[int, str]:
    """Run ``rlconform certify spec``, send SIGINT once ``ready(report)`` holds, return the exit
    status and stderr."""
    # SIGINT at its default in the child: a test run started as a background job of a
    # non-interactive shell inherits SIGINT ignored, and Ctrl-C could then never arrive
    proc = subprocess.Popen([sys.executable, "-m", "conformance.cli", "certify", spec, "--out",
                             str(report.parent), "-q"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None and not ready(report):
            time.sleep(0.02)
        assert proc.poll() is None, f"certify ended before the signal: {proc.communicate()}"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    return proc.returncode, stderr


def _report_rows(report: Path):
    try:
        return json.loads(report.read_text())["checks"]
    except (OSError, ValueError, KeyError):
        return None


def test_ctrl_c_leaves_both_reports_incomplete_and_exits_130(tmp_path):
    """SIGINT once the JSON report holds a row. The adapter hangs in
    leave_one_out_advantages (60 s timeout), so the run is certainly still going when the
    signal arrives, however fast the machine."""
    report = tmp_path / "D" / "broken-hangs.json"
    rc, stderr = _interrupt("tests.broken_adapters:hangs", report, lambda r: bool(_report_rows(r)))
    assert rc == 130, f"Ctrl-C should exit 130, got {rc}:\n{stderr}"
    line = _one_line(stderr)
    assert line.startswith("rlconform: interrupted; partial reports in"), line
    assert report.is_file() and report.with_suffix(".md").is_file(), "a report is missing"
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["checks"], "the JSON report should be incomplete"
    md = report.with_suffix(".md").read_text()
    assert "INCOMPLETE" in md and re.search(r"\b\d+ of \d+ checks ran", md), md[:600]


def test_ctrl_c_while_the_worker_starts_still_writes_both_reports(tmp_path):
    """SIGINT while the worker computes framework_defaults (a heavy framework importing): the
    reports exist from the start, so they are written, incomplete, with no check."""
    report = tmp_path / "D" / "slow-defaults.json"
    started = []

    def ready(r):                  # the report exists; then a second for the worker to start
        if r.is_file() and not started:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 1.0
    rc, stderr = _interrupt("tests.broken_adapters:slow_defaults", report, ready)
    assert rc == 130, f"Ctrl-C should exit 130, got {rc}:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    data = json.loads(report.read_text())
    assert data["complete"] is False and data["checks"] == [], data
    assert "INCOMPLETE" in report.with_suffix(".md").read_text()


def test_a_framework_declaration_that_is_no_version_specifier_is_a_warning(tmp_path):
    data = certify("tests.broken_adapters:bad_specifier", tmp_path, pattern="dpo_loss/log2-*")
    assert data["complete"] and any("'latest'" in w and "specifier" in w
                                    for w in data["warnings"]), data["warnings"]


def _truncated_report(tmp_path, keep=3):
    data = certify(REFIMPL, tmp_path / "full", pattern="dpo_loss/*", isolate=False)
    data = json.loads(json.dumps(data))
    data["checks"] = data["checks"][:keep]
    data["summary"] = {s: sum(r["status"] == s for r in data["checks"]) for s in data["summary"]}
    data["complete"] = False
    return data


def test_markdown_of_an_incomplete_report_says_how_many_checks_ran(tmp_path):
    from conformance.report import render_markdown
    data = _truncated_report(tmp_path)
    md = render_markdown(data, total=N_DPO)
    head = "\n".join(md.splitlines()[:6])
    assert "INCOMPLETE" in head, f"the verdict of an incomplete report should be INCOMPLETE:\n{head}"
    assert f"3 of {N_DPO} checks ran" in md, f"the report should say how many checks ran:\n{head}"
    assert "3 checks ran" in render_markdown(data), "without a total it should still count"
    assert "checks ran" not in render_markdown({**data, "complete": True}, total=N_DPO)


def test_compare_marks_an_incomplete_report(tmp_path, capsys):
    data = _truncated_report(tmp_path)
    data["adapter"] = "refimpl-cut"
    cut = tmp_path / "refimpl-cut.json"
    cut.write_text(json.dumps(data))
    assert main(["compare", str(tmp_path / "full" / "refimpl.json"), str(cut), "--out",
                 str(tmp_path / "cmp")]) == 0, capsys.readouterr().err
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "refimpl-cut (incomplete)" in md, "the incomplete adapter is not marked"
    assert "refimpl (incomplete)" not in md, "a complete report was marked incomplete"
    assert re.search(r"incomplete.*`refimpl-cut` \(3 checks ran\)", md, re.I), (
        "the comparison should say which report is incomplete and how much of it ran")


# --- 5. the plugin with an adapter that cannot be loaded -------------------------------------------

@pytest.mark.parametrize("spec", ["no.such.module:thing", "no_such_adapter"])
def test_plugin_with_an_adapter_that_cannot_be_loaded_is_a_usage_error(tmp_path, spec):
    proc = _pytest(tmp_path, "--rlconform-adapter", spec)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, f"pytest should end in a usage error (4), got {proc.returncode}:\n{out}"
    assert "INTERNALERROR" not in out, f"a bad adapter spec is not an internal error:\n{out[:2000]}"
    assert spec.split(":")[0] in out, f"the message should name the spec:\n{out}"
    assert len([ln for ln in out.splitlines() if ln.strip()]) <= 3, f"not one clear line:\n{out}"


# --- 6. naming an adapter ------------------------------------------------------------------------------

TINY_MODULE = 'from refimpl import dpo_loss\n\nname = "tiny"\n'
TINY_OBJECT = ('import refimpl\n\n\nclass Tiny:\n    name = "tiny"\n'
               '    dpo_loss = staticmethod(refimpl.dpo_loss)\n\n\nADAPTER = Tiny()\n')
PLAIN_OBJECT = 'class Plain:\n    name = "plain"\n\n\nADAPTER = Plain()\n'


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """An empty current directory that is not on sys.path; sys.path and the modules imported
    from it are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        module = sys.modules[name]
        if str(tmp_path) in str(getattr(module, "__file__", "") or ""):
            del sys.modules[name]


def test_the_current_directory_is_importable(user_dir):
    (user_dir / "cwd_adapter_mod.py").write_text(PLAIN_OBJECT)
    adapter = load_adapter("cwd_adapter_mod:ADAPTER")
    assert adapter.name == "plain"
    assert sys.path[0] == os.getcwd(), "the current directory should come first on sys.path"


def test_a_file_path_names_a_file_loaded_under_a_stable_module_name(user_dir):
    (user_dir / "sub").mkdir()
    (user_dir / "sub" / "my_adapter.py").write_text(PLAIN_OBJECT)
    first = load_adapter("sub/my_adapter.py:ADAPTER")
    assert first.name == "plain"
    module = type(first).__module__
    assert sys.modules[module].__file__ == str((user_dir / "sub" / "my_adapter.py").resolve())
    again = load_adapter(f"{user_dir / 'sub' / 'my_adapter.py'}:ADAPTER")
    assert type(again) is type(first), "the same file was loaded twice as two modules"
    proc = subprocess.run([sys.executable, "-c", "import sys; from conformance.loading import "
                           "load_adapter; print(type(load_adapter(sys.argv[1])).__module__)",
                           "sub/my_adapter.py:ADAPTER"], cwd=user_dir, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == module, (
        f"another process (the worker) must register the file under the same name: "
        f"{proc.stdout.strip()!r} != {module!r} {proc.stderr[-500:]}")


@pytest.mark.parametrize("spec", ["tiny_mod_adapter:", "tiny_mod_adapter", "tiny_mod_adapter.py:"])
def test_a_module_can_itself_be_the_adapter(user_dir, spec):
    (user_dir / "tiny_mod_adapter.py").write_text(TINY_MODULE)
    adapter = load_adapter(spec)
    assert isinstance(adapter, ModuleType), f"{spec!r} should name the module, got {adapter!r}"
    assert adapter.name == "tiny" and callable(adapter.dpo_loss)


def test_a_registered_name_comes_before_a_module_of_that_name():
    adapter = load_adapter("refimpl")
    assert not isinstance(adapter, ModuleType), "`refimpl` should be the registered adapter"
    assert adapter.name == "refimpl"


@pytest.mark.parametrize("spec,says", [
    ("no_such_module_xyz", "'no_such_module_xyz': not a registered name"),
    ("no_such_module_xyz:", "no module named 'no_such_module_xyz'"),
    ("no/such/file.py:ADAPTER", "no adapter file 'no/such/file.py'"),
    ("plain_adapter_mod:NOPE", "has no attribute 'NOPE'"),
    ("nameless_adapter_mod:", "needs a `name`"),
    (":ADAPTER", "nothing before the colon"),
])
def test_an_adapter_that_cannot_be_loaded_is_one_clear_line(user_dir, spec, says):
    (user_dir / "plain_adapter_mod.py").write_text(PLAIN_OBJECT)
    (user_dir / "nameless_adapter_mod.py").write_text("x = 1\n")
    with pytest.raises(AdapterLoadError) as info:
        load_adapter(spec)
    message = str(info.value)
    assert "\n" not in message and says in message, f"unclear message for {spec!r}: {message}"


@pytest.mark.parametrize("spec", ["tiny", "adapters/tiny_file.py:ADAPTER"])
def test_certify_an_adapter_file_from_the_users_directory(tmp_path, spec):
    """As a user would: a file in their directory, `rlconform` on PATH, worker isolation."""
    (tmp_path / "tiny.py").write_text(TINY_MODULE)
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "tiny_file.py").write_text(TINY_OBJECT)
    proc = subprocess.run([str(RLCONFORM), "certify", spec, "--out", "out", "-k", "dpo_loss/*",
                           "-q"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"certify {spec} failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
    data = json.loads((tmp_path / "out" / "tiny.json").read_text())
    assert data["complete"] and data["summary"]["pass"] == N_DPO, data["summary"]


# --- 7. compare and the report schema ---------------------------------------------------------------

def _valid_report(tmp_path) -> Path:
    certify(REFIMPL, tmp_path / "r", pattern="dpo_loss/*", isolate=False)
    return tmp_path / "r" / "refimpl.json"


@pytest.mark.parametrize("break_it,path", [
    (lambda d: d.__setitem__("checks", "nope"), "$.checks"),
    (lambda d: d["checks"][1].__setitem__("status", "passed"), "$.checks[1].status"),
    (lambda d: d["summary"].__setitem__("fail", "0"), "$.summary.fail"),
    (lambda d: d.pop("contract_version"), "contract_version"),
    (lambda d: d.__setitem__("adapter", "a b/c"), "$.adapter"),
])
def test_compare_names_the_file_and_the_field_of_a_report_of_the_wrong_shape(tmp_path, capsys,
                                                                            break_it, path):
    data = json.loads(_valid_report(tmp_path).read_text())
    break_it(data)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    rc = main(["compare", str(bad), "--out", str(tmp_path / "cmp")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2, f"a malformed report should exit 2, got {rc}"
    assert str(bad) in line and path in line, f"the message should name {bad} and {path}: {line}"


def test_compare_skips_a_previous_comparison_but_not_a_lookalike(tmp_path, capsys):
    report = _valid_report(tmp_path)
    cmp = tmp_path / "cmp"
    assert main(["compare", str(report), "--out", str(cmp)]) == 0
    assert main(["compare", str(report), str(cmp / "comparison.json"), "--out", str(cmp)]) == 0, (
        capsys.readouterr().err)
    lookalike = tmp_path / "lookalike.json"
    lookalike.write_text(json.dumps({"adapters": "refimpl", "checks": []}))
    capsys.readouterr()
    assert main(["compare", str(report), str(lookalike), "--out", str(cmp)]) == 2
    assert "lookalike.json" in _one_line(capsys.readouterr().err)


def test_every_report_certify_writes_matches_the_schema(tmp_path):
    """Reports generated now (every status, an incomplete one), not the committed ones."""
    from jsonschema import Draft202012Validator

    from conformance.report import ReportWriter
    from conformance.runner import run_check

    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    runs = [(REFIMPL, "dpo_loss/*"), (mutants.adapter("dpo_smoothing_swapped"), "dpo_loss/*"),
            (broken_adapters.declared, "gae/matches-reference"),
            (broken_adapters.declared, "leave_one_out_advantages/baseline-excludes-self"),
            (broken_adapters.listy, "bradley_terry_loss/*"), (broken_adapters.partial, "gae/*")]
    paths = []
    for i, (adapter, pattern) in enumerate(runs):
        certify(adapter, tmp_path / str(i), pattern=pattern, isolate=False)
        paths.append(tmp_path / str(i) / f"{adapter.name}.json")
    writer = ReportWriter(tmp_path / "cut", REFIMPL, seed=0)
    writer.add(run_check(all_checks("dpo_loss/*")[0], REFIMPL))
    paths.append(writer.json_path)
    statuses = set()
    validator = Draft202012Validator(schema)
    for path in paths:
        data = json.loads(path.read_text())
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(data)]
        assert not errors, f"{path.relative_to(tmp_path)} does not match the schema: {errors}"
        statuses |= {r["status"] for r in data["checks"]}
    assert statuses == {"pass", "fail", "error", "skip", "xfail"}, statuses


# --- 8. what each kind of non-pass row says -----------------------------------------------------------

STALE = ("The framework now behaves as the contract says: remove the declaration (or pin the "
         "version it was written for)")
TIMEOUT = ("The call did not return within --timeout; raise --timeout if the framework is slow, "
           "or look for a hang")
KILLED = "The adapter's process died (segfault or os._exit) during the call"
RAISED = "The call raised or returned something malformed; see the message"


def _rows():
    ids = [c.id for c in all_checks("dpo_loss/*")]
    cases = {
        "fail": ("fail", "values differ"),
        "xfail": ("xfail", "values differ | declared: scales by G (acme/loo.py:12, acme 0.1)"),
        "stale": ("fail", "declared deviation no longer occurs: scales by G (acme/loo.py:12)"),
        "timeout": ("error", "timed out after 2 s (the worker was killed and restarted)"),
        "killed": ("error", "the adapter killed its process (exit code 3) during this check; "
                            "the worker was restarted"),
        "raised": ("error", "RuntimeError: boom (at acme.py:3, sample s0)"),
    }
    rows = {}
    for (case, (status, message)), check_id in zip(cases.items(), ids):
        chk = REGISTRY[check_id]
        rows[case] = {"id": check_id, "estimator": chk.estimator, "kind": chk.kind,
                      "status": status, "message": message, "seconds": 0.1, "clause": chk.clause,
                      "dtype": "float64", "sample": "s0", "expected": None, "actual": None,
                      "abs_err": None, "rel_err": None, "note": None}
    return rows


def test_each_kind_of_non_pass_row_says_what_it_means_on_the_command_line():
    from conformance.cli import _format_row
    args = parser().parse_args(["certify", "acme.py:A", "--out", "o"])
    rows = _rows()
    wanted = {"fail": f"Most likely: {REGISTRY[rows['fail']['id']].hint}",
              "xfail": "scales by G (acme/loo.py:12, acme 0.1)", "stale": STALE,
              "timeout": TIMEOUT, "killed": KILLED, "raised": RAISED}
    for case, row in rows.items():
        text = _format_row(row, "acme", args)
        assert wanted[case] in text, f"a {case} row should say {wanted[case]!r}:\n{text}"
        if case != "fail":
            assert "Most likely" not in text, f"a {case} row should not carry the fix hint:\n{text}"
        others = [w for c, w in wanted.items() if c not in (case, "fail") and w in text]
        assert not others, f"a {case} row says another kind's line {others}:\n{text}"


def test_each_kind_of_non_pass_row_says_what_it_means_in_the_markdown_report():
    from conformance.report import render_markdown
    rows = _rows()
    data = {"adapter": "acme", "versions": {}, "complete": True, "seed": 0,
            "rlconform_version": "0", "contract_version": "1.1", "framework_defaults": {},
            "warnings": [], "summary": {s: 0 for s in ("pass", "fail", "error", "skip", "xfail")},
            "checks": list(rows.values())}
    md = render_markdown(data)
    line = {case: next(ln for ln in md.splitlines() if f"`{row['id']}`" in ln and ln.startswith("|"))
            for case, row in rows.items()}
    for case in ("fail", "xfail"):
        consequence = REGISTRY[rows[case]["id"]].consequence
        assert f"Consequence: {consequence}" in line[case], f"{case}: no consequence:\n{line[case]}"
    for case, sentence in (("stale", STALE), ("timeout", TIMEOUT), ("killed", KILLED),
                           ("raised", RAISED)):
        assert sentence in line[case], f"{case} row should say {sentence!r}:\n{line[case]}"
        assert "Consequence" not in line[case], (
            f"the consequence belongs to fail/xfail rows only, not to a {case} row:\n{line[case]}")


# --- 9. explain and the links to the contract ---------------------------------------------------------

def test_explain_quotes_the_contract_section_and_says_where_things_are_defined(capsys):
    check_id = "ppo_clip_loss/gradient-zero-when-clipped"
    chk = REGISTRY[check_id]
    assert main(["explain", check_id]) == 0
    out = capsys.readouterr().out
    heading = f"Contract (docs/contract.md#{chk.section}):"
    assert heading in out, f"explain should quote the contract under {heading!r}:\n{out[:1500]}"
    after = out.split(heading, 1)[1]
    quoted = contract_doc.quote(chk.section, chk.estimator).splitlines()
    assert after.lstrip("\n").startswith("  " + quoted[0]), "the quote should follow the heading"
    row = next(ln for ln in quoted if ln.startswith(f"| `{chk.estimator}("))
    assert "  " + row in after, f"the function's row of the contract is not quoted: {row!r}"
    assert out.index("Equation:") < out.index(heading), "the quote comes after the equation"
    assert f"{chk.file}:{chk.line}" in out, "explain should say where the check is defined"
    assert "tests/mutants.py" not in out, "the mutants are not defined in tests/mutants.py"
    for name in chk.mutants:
        where = re.search(rf"{re.escape(name)}\b.*?\(defined in ([\w/.]+)\)", out.replace("\n  ", " "))
        assert where, f"mutant {name} is not listed with where it is defined:\n{out}"
        assert where.group(1).startswith("conformance/checks/") and (ROOT / where.group(1)).is_file(), where.group(1)


def test_explain_says_generic_mutants_come_from_the_templates(capsys):
    chk = next(c for c in all_checks(thorough=True) if any("~" in m for m in c.mutants))
    assert main(["explain", chk.id]) == 0
    out = capsys.readouterr().out.replace("\n  ", " ")
    generic = next(m for m in chk.mutants if "~" in m)
    assert re.search(rf"{re.escape(generic)}.*\(defined in conformance/checks/templates\.py\)", out), out


def test_markdown_report_links_each_check_to_its_contract_section(tmp_path):
    certify(REFIMPL, tmp_path / "deep" / "rep", pattern="dpo_loss/*", isolate=False)
    md_path = tmp_path / "deep" / "rep" / "refimpl.md"
    md = md_path.read_text()
    links = re.findall(r"\[contract §([\w-]+)\]\(<?([^)>]+?)>?\)", md)
    assert len(links) == N_DPO, f"expected one contract link per check, found {len(links)}:\n{md}"
    for anchor, target in links:
        path, _, fragment = target.partition("#")
        assert fragment == anchor and anchor in contract_doc.sections(), target
        assert (md_path.parent / path).resolve().is_file(), (
            f"{target} does not lead to the contract from {md_path.parent}")


# --- 10. --version, help texts ---------------------------------------------------------------------------

def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rlconform {dist_version('rlconform')}"


def _subparsers(p: argparse.ArgumentParser):
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_and_argument_has_a_help_text():
    p = parser()
    missing = [f"rlconform {name} {'/'.join(a.option_strings) or a.dest}"
               for name, sub in [("", p), *_subparsers(p).items()] for a in sub._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and (not a.help or a.help == argparse.SUPPRESS)]
    assert not missing, f"options without a help text: {missing}"


def test_setup_offers_every_bundled_framework():
    setup = _subparsers(parser())["setup"]
    text = setup.format_help()
    missing = [f for f in FRAMEWORKS if f not in text]
    assert not missing, f"`rlconform setup --help` does not list {missing}:\n{text}"
    action = next(a for a in setup._actions if a.dest == "framework")
    assert list(action.choices) == [*FRAMEWORKS, *GROUPS]


def test_setup_bench_installs_every_member_of_the_group(capsys):
    """`rlconform setup bench` runs each member's own setup, in order (a dry run prints them)."""
    assert main(["setup", "bench", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for member in GROUPS["bench"]:
        assert FRAMEWORKS[member][0] == "script" or " ".join(FRAMEWORKS[member][1]) in printed
    assert printed.count("rlconform setup:") == len(GROUPS["bench"])
    assert "verl" not in GROUPS["bench"]          # its pins clash with torchrl's and TRL's


def test_every_committed_report_matches_the_schema():
    """reports/*.json (regenerated by reports/regenerate.sh) are valid certification reports of
    the current contract version."""
    import conformance.contract
    from conformance.compare import validate_report

    root = Path(__file__).resolve().parents[1] / "reports"
    paths = [p for p in sorted(root.glob("*.json")) if p.name != "comparison.json"]
    from conformance.loading import registered_adapters
    missing = sorted(set(registered_adapters()) - {p.stem for p in paths})
    assert not missing, f"no committed report for {missing}: run bash reports/regenerate.sh"
    for path in paths:
        data = json.loads(path.read_text())
        validate_report(data, str(path))
        assert data["contract_version"] == conformance.contract.CONTRACT_VERSION, path
        assert data["complete"] is True, f"{path} is an incomplete run"


# --- repro: a standalone script for one deviation (conformance/repro.py) --------------------------

MUTANT_FILE = ("from conformance.checks.templates import mutant_adapter\n"
               "broken = mutant_adapter('group_normalized_advantages~scaled')\n")


@pytest.mark.parametrize("argv,says", [
    (["repro", "no_such_adapter", "gae/matches-reference"], "no adapter named 'no_such_adapter'"),
    (["repro", "refimpl", "gae/matches-referenc"], "close: gae/matches-reference"),
    (["repro", "refimpl", "no_such_check"], "no check 'no_such_check'"),
])
def test_repro_usage_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, says):
    rc = main(argv + ["--out", str(tmp_path / "r.py")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and says in line, line
    assert not (tmp_path / "r.py").exists()


@pytest.mark.parametrize("where", ["directory", "under_a_file", "read_only"])
def test_repro_out_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys, where):
    if where == "directory":
        out = tmp_path
    elif where == "under_a_file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "r.py"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        (tmp_path / "ro").mkdir(mode=0o500)
        out = tmp_path / "ro" / "r.py"
    rc = main(["repro", "refimpl", "gae/matches-reference", "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "--out" in line, line


def test_repro_of_an_adapter_that_agrees_says_so_and_exits_1(tmp_path, capsys):
    out = tmp_path / "r.py"
    rc = main(["repro", "refimpl", "gae/matches-reference", "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and "agrees with refimpl" in line and "nothing to reproduce" in line
    assert not out.exists()


def test_repro_writes_a_script_that_reproduces(tmp_path, capsys):
    adapter = tmp_path / "broken.py"
    adapter.write_text(MUTANT_FILE)
    out = tmp_path / "scripts" / "r.py"
    rc = main(["repro", f"{adapter}:broken", "group_normalized_advantages/matches-reference",
               "--out", str(out), "--seed", "3"])
    said = capsys.readouterr().out
    assert rc == 0 and str(out) in said and "value differs" in said
    assert "(seed 3)" in out.read_text()
    done = subprocess.run([sys.executable, "-I", str(out)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "REPRODUCED" in done.stdout, done.stdout + done.stderr


def test_repro_is_listed_with_its_options():
    sub = _subparsers(parser())["repro"]
    text = sub.format_help()
    assert all(word in text for word in ("ADAPTER", "CHECK_ID", "--out", "--seed")), text
