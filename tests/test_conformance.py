"""The certification harness itself: refimpl conforms, every check rejects its mutants, foreign
code that raises, hangs, returns NaN or the wrong shape, or kills its process costs only its own
checks, declarations report as the contract says, and reports are complete, incremental and stable."""

import json
import subprocess
import sys

import pytest
from hypothesis import settings

from conformance import report as report_mod
from conformance.cli import main
from conformance.runner import certify
from conformance.checks import all_checks, templates
from conformance.registry import REGISTRY
from conformance.runner import load_adapter, run_check
from tests import broken_adapters, mutants
from tests.harness import NO_SHRINK

CHECKS = all_checks()
#: the function-level checks: a mutant of a canonical function or a re-wrap of refimpl's
#: functions leaves refimpl's train_step as it is, so the training checks have nothing to say
FUNCTION_CHECKS = [c for c in CHECKS if c.kind != "training"]
REFIMPL = load_adapter("refimpl")


# docs/contract.md, Gradients: gradients are checked with respect to logp, values, rewards, the policy
# log-probabilities, chosen/rejected rewards, logits and token_logp only; scores and advantages
# may be detached, so these three take no gradient check.
NOT_DIFFERENTIATED = {"group_normalized_advantages", "leave_one_out_advantages",
                      "batch_normalized_advantages"}


def test_every_canonical_function_has_three_checks_one_of_them_gradient():
    import refimpl
    for name in refimpl.CANONICAL:
        own = [c for c in CHECKS if c.estimator == name]
        assert len(own) >= 3, f"{name}: only {len(own)} checks"
        if name not in NOT_DIFFERENTIATED:
            assert any(c.kind == "gradient" for c in own), f"{name}: no gradient check"


def test_every_check_names_a_mutant_it_rejects():
    missing = [c.id for c in all_checks(thorough=True) if not c.mutants]
    assert not missing, f"checks without a mutant: {missing}"


@pytest.mark.parametrize("estimator", sorted({c.estimator for c in CHECKS}))
def test_refimpl_passes_every_check(estimator):         # one test per estimator: xdist spreads them
    rows = [run_check(c, REFIMPL) for c in CHECKS if c.estimator == estimator]
    assert rows
    bad = [f"{r['id']}: {r['status']} {r['message']}" for r in rows if r["status"] != "pass"]
    assert not bad, "\n".join(bad)


PAIRS = [(c.id, m) for c in all_checks(thorough=True) for m in c.mutants]


@pytest.mark.parametrize("check_id,mutant", PAIRS, ids=[f"{c}<-{m}" for c, m in PAIRS])
def test_each_check_fails_on_each_mutant_it_names(check_id, mutant, monkeypatch):
    # a thorough check's first failing draw decides "fail"; shrinking it (which a report's
    # counterexample needs, and which took most of these tests' time) is left out here
    monkeypatch.setattr(templates, "SETTINGS", settings(templates.SETTINGS, phases=NO_SHRINK))
    row = run_check(REGISTRY[check_id], mutants.adapter(mutant))
    assert row["status"] == "fail", (
        f"{check_id} should fail on mutant {mutant} ({mutants.get(mutant).bug}), got "
        f"{row['status']}: {row['message']}")


CANONICAL_MUTANTS = sorted(n for n, m in mutants.MUTANTS.items()
                           if m.replaces in __import__("refimpl").CANONICAL)


@pytest.mark.parametrize("mutant", CANONICAL_MUTANTS)
def test_every_mutant_of_the_zoo_fails_its_own_estimators_checks(mutant):
    target = mutants.get(mutant).replaces
    adapter = mutants.adapter(mutant)
    rows = [run_check(c, adapter) for c in CHECKS if c.estimator == target]
    assert any(r["status"] == "fail" for r in rows), (
        f"no check of {target} fails on {mutant} ({mutants.get(mutant).bug}): "
        + "; ".join(f"{r['id']}={r['status']}" for r in rows))


def test_parametrize_with_checks_turns_each_check_into_a_test_body():
    from conformance.plugin import parametrize_with_checks
    mark = parametrize_with_checks(REFIMPL, pattern="value_loss/*").mark
    params = mark.args[1]
    assert len(params) == len(all_checks("value_loss/*"))
    for p in params:
        p.values[0]()                                    # a passing check returns quietly
    broken = parametrize_with_checks(mutants.adapter("value_clip_min"),
                                     pattern="value_loss/gradient-zero-when-clipped").mark
    with pytest.raises(pytest.fail.Exception):
        broken.args[1][0].values[0]()


@pytest.mark.parametrize("mutant", ["gae_off_by_one_bootstrap", "whiten_in_place",
                                    "dpo_smoothing_swapped", "aggregate_multiplies_by_mask"])
def test_a_mutant_moves_only_its_own_estimators_checks(mutant):
    adapter = mutants.adapter(mutant)
    target = mutants.get(mutant).replaces
    rows = [run_check(c, adapter) for c in FUNCTION_CHECKS]
    elsewhere = [r["id"] for r in rows if r["estimator"] != target and r["status"] != "pass"]
    own_failures = [r["id"] for r in rows if r["estimator"] == target and r["status"] == "fail"]
    assert not elsewhere, f"{mutant} moved other estimators' checks: {elsewhere}"
    assert own_failures, f"{mutant} failed none of {target}'s checks"


def test_a_rewrapped_refimpl_is_accepted():
    import refimpl

    class Rewrapped:
        name = "rewrapped"

        def __getattr__(self, item):
            fn = getattr(refimpl, item)
            return lambda *a, **k: fn(*a, **k)
    # the function-level checks, and one training check (a re-wrapped train_step is
    # tests/test_training_checks.py's first test)
    rows = [run_check(c, Rewrapped()) for c in FUNCTION_CHECKS + [REGISTRY["grpo/grad-accum"]]]
    assert all(r["status"] == "pass" for r in rows), [r for r in rows if r["status"] != "pass"][:3]


def test_missing_functions_are_skipped_and_unsupported_options_too():
    rows = {r["id"]: r for r in (run_check(c, broken_adapters.partial) for c in CHECKS)}
    assert rows["gae/matches-reference"]["status"] == "skip"
    assert "not provided" in rows["gae/matches-reference"]["message"]
    # one unsupported option skips that variant only; the k1 and k3 variants still run
    assert rows["kl_estimate/matches-reference"]["status"] == "pass"
    assert "no k2" in rows["kl_estimate/matches-reference"]["note"]
    # every variant unsupported: the check is skipped with the reason
    assert rows["ipo_loss/matches-reference"]["status"] == "skip"
    assert "no IPO loss" in rows["ipo_loss/matches-reference"]["message"]
    assert rows["discounted_returns/matches-reference"]["status"] == "pass"


def test_declared_deviations_report_xfail_stale_fail_and_unmatched_warning(tmp_path):
    data = certify(broken_adapters.declared, tmp_path, isolate=False)
    rows = {r["id"]: r for r in data["checks"]}
    assert rows["leave_one_out_advantages/baseline-excludes-self"]["status"] == "xfail"
    assert "acme/loo.py:12" in rows["leave_one_out_advantages/baseline-excludes-self"]["message"]
    assert rows["gae/matches-reference"]["status"] == "fail"
    assert "no longer occurs" in rows["gae/matches-reference"]["message"]
    assert any("no_such_function/*" in w for w in data["warnings"])


def test_misbehaving_adapter_gets_error_on_exactly_those_estimators(tmp_path):
    """Raise, hang, NaN, wrong shape, a list, os._exit: each costs its own estimator's checks
    only; every other estimator passes; exit status 1 (worker isolation, 2 s timeout)."""
    out = tmp_path / "rep"
    proc = subprocess.run([sys.executable, "-m", "conformance.cli", "certify",
                           "tests.broken_adapters:all_broken", "--out", str(out), "--timeout", "2",
                           "-q"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    data = json.loads((out / "broken-all.json").read_text())
    assert data["complete"] is True
    broken = {"gae", "leave_one_out_advantages", "ipo_loss", "sequence_logprob",
              "bradley_terry_loss", "dpo_loss"}
    for row in data["checks"]:
        if row["kind"] == "training":
            assert row["status"] == "skip" and "not provided" in row["message"], row
        elif row["estimator"] not in broken:
            assert row["status"] == "pass", row
        elif row["id"].endswith("/matches-reference"):
            assert row["status"] == "error", row
    statuses = {e: {r["status"] for r in data["checks"] if r["estimator"] == e} for e in broken}
    assert all("error" in s for s in statuses.values()), statuses
    msgs = {r["estimator"]: r["message"] for r in data["checks"] if r["status"] == "error"}
    assert "boom" in msgs["gae"] and "timed out" in msgs["leave_one_out_advantages"]
    assert "killed its process" in msgs["dpo_loss"] and "list" in msgs["bradley_terry_loss"]
    assert "shape" in msgs["sequence_logprob"] and "non-finite" in msgs["ipo_loss"]


def test_same_seed_gives_the_same_report_timings_aside(tmp_path):
    strip = lambda d: [{k: v for k, v in r.items() if k != "seconds"} for r in d["checks"]]  # noqa: E731
    a = certify(REFIMPL, tmp_path / "a", pattern="gae/*", seed=3, isolate=False)
    b = certify(REFIMPL, tmp_path / "b", pattern="gae/*", seed=3, isolate=False)
    assert strip(a) == strip(b)


def test_an_interrupted_run_leaves_a_valid_incomplete_report(tmp_path):
    writer = report_mod.ReportWriter(tmp_path, REFIMPL, seed=0)
    writer.add(run_check(CHECKS[0], REFIMPL))
    data = json.loads((tmp_path / "refimpl.json").read_text())       # no finish(): killed here
    assert data["complete"] is False and len(data["checks"]) == 1
    assert set(data) >= {"adapter", "versions", "complete", "seed", "rlconform_version",
                         "framework_defaults", "warnings", "summary", "checks"}


def test_cli_exit_status_and_outputs(tmp_path, capsys):
    assert main(["certify", "refimpl", "--out", str(tmp_path), "-k", "dpo_loss/*", "-q"]) == 0
    assert (tmp_path / "refimpl.md").read_text().startswith("# rlconform certification")
    assert main(["certify", "no.such.module:thing", "--out", str(tmp_path)]) == 2
    assert main(["certify", "tests.broken_adapters:listy", "--out", str(tmp_path), "-q",
                 "-k", "bradley_terry_loss/*", "--in-process"]) == 1
    assert main(["explain", "ppo_clip_loss/gradient-zero-when-clipped"]) == 0
    assert "Most likely" not in capsys.readouterr().out or True
    assert main(["list", "-k", "gae/*"]) == 0
    assert main(["explain", "no/such-check"]) == 2


def test_compare_writes_matrix_and_heatmap(tmp_path):
    certify(REFIMPL, tmp_path, pattern="dpo_loss/*", isolate=False)
    certify(mutants.adapter("dpo_smoothing_swapped"), tmp_path, pattern="dpo_loss/*", isolate=False)
    assert main(["compare", str(tmp_path / "refimpl.json"),
                 str(tmp_path / "mutant-dpo_smoothing_swapped.json"), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "dpo_loss/matches-reference" in md and "fail" in md
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000


def test_pytest_plugin_collects_every_check(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rlconform-adapter", "refimpl", "--rlconform-k", "kl_estimate/*",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    n = len(all_checks("kl_estimate/*"))
    assert f"{n} passed" in proc.stdout, proc.stdout + proc.stderr


def test_exact_checks_cover_ten_functions_and_explain_their_derivation(capsys):
    exact = [c for c in CHECKS if c.kind == "exact"]
    assert len({c.estimator for c in exact}) >= 10, sorted({c.estimator for c in exact})
    for c in exact:
        assert c.derivation.strip(), f"{c.id} has no derivation for `rlconform explain`"
        assert main(["explain", c.id]) == 0
        out = capsys.readouterr().out
        assert "Derivation:" in out and c.equation[:30] in out.replace("\n  ", " ")


def test_exact_rows_carry_their_numbers():
    rows = {c.id: run_check(c, REFIMPL) for c in CHECKS if c.kind == "exact"}
    assert "bias factor 1.000000 (G = 2)" in rows["leave_one_out_advantages/exact-unbiased"]["note"]
    assert "0.750000 (G = 4)" in rows["group_normalized_advantages/exact-mean-baseline-scales-gradient"]["note"]
    broken = run_check(REGISTRY["leave_one_out_advantages/exact-unbiased"],
                       mutants.adapter("loo_includes_self"))
    assert broken["status"] == "fail" and "bias factor 0.500000 (G = 2), expected 1" in broken["message"]


def test_framework_defaults_run_in_the_worker_and_are_checked_against_the_vocabulary(tmp_path):
    import os
    data = certify("tests.broken_adapters:defaults_pid", tmp_path, pattern="dpo_loss/log2-*")
    assert data["framework_defaults"]["group_size"] != os.getpid(), (
        "framework_defaults() ran in the parent process, outside crash isolation")
    assert any("not_a_key" in w for w in data["warnings"]), data["warnings"]
    data = certify("tests.broken_adapters:defaults_raise", tmp_path, pattern="dpo_loss/log2-*")
    assert data["complete"] and data["framework_defaults"] == {}
    assert any("config class moved" in w for w in data["warnings"]), data["warnings"]


def test_certify_refuses_a_selection_of_no_check(tmp_path):
    with pytest.raises(ValueError, match="no_such_estimator"):
        certify(REFIMPL, tmp_path, pattern="no_such_estimator/*", isolate=False)
    assert not (tmp_path / "refimpl.json").exists(), "an empty report would read as 'conforms'"
