"""docs/sheet.md, the executable reference sheet (``rlconform sheet``): the committed text is what
the generator writes today, every claim in it holds, and a broken refimpl function makes the
generator fail.

The mutants are the harness's own (``conformance/checks``), each run against the part of the
sheet that states a claim about the function it breaks; a mutant the sheet cannot see is declared
in ``UNSEEN`` with the reason, not left out silently.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import refimpl
from conformance.checks import all_checks
from conformance.checks.templates import MUTANTS
from conformance.cli import main
from conformance.sheet import decisions, equations, questions, run_section, variance
from conformance.sheet.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]

all_checks()                                     # registers the mutants

#: mutant -> the parts of the sheet that must record a failed claim with it in place
SEEN = {
    "pg_sign_flipped": [equations.policy_gradient],
    "ppo_min_max_swapped": [equations.ppo_clip, questions.clipping],
    "ppo_clip_high_ignored": [equations.ppo_clip],
    "ppo_dual_clip_max": [questions.clipping],
    "ppo_ratio_inverted": [equations.ppo_clip, questions.clipping],
    "group_std_biased": [equations.grpo_advantage],
    "group_mean_not_subtracted": [equations.grpo_advantage],
    "group_none_excludes_self": [equations.grpo_advantage],
    "group_divides_by_variance": [equations.grpo_advantage],
    "loo_includes_self": [variance._formulas],
    "loo_divides_by_group_size": [variance._formulas],
    "whiten_biased_var": [variance._formulas],
    "k1_ratio_inverted": [equations.kl, questions.kl_three_ways],
    "k3_ratio_inverted": [equations.kl, questions.kl_three_ways],
    "k3_log_sign_flipped": [equations.kl],
    "k2_missing_half": [equations.kl, questions.kl_three_ways],
    "gae_off_by_one_bootstrap": [equations.gae],
    "gae_forward_accumulation": [equations.gae],
    "gae_bootstraps_past_last_token": [equations.gae],
    "returns_forward_in_time": [equations.value_functions],
    "dpo_ignores_reference": [equations.dpo],
    "dpo_sign_flipped": [equations.dpo, questions.dpo_vs_rl],
    "ipo_tau_not_halved": [decisions._noisy_vs_clean],
    "bt_sign_flipped": [equations.bradley_terry],
    "logprobs_softmax_over_time": [questions.derivation],
    "seq_logprob_reads_padding": [questions.derivation],
}

#: mutants of functions the sheet uses that it does not detect, and why
UNSEEN = {
    "group_accepts_singleton": "input validation (a group of one); the sheet computes, it does "
                               "not probe error handling",
    "dpo_accepts_nonpositive_beta": "input validation",
    "ppo_accepts_dual_clip_le_one": "input validation",
    "gae_accepts_any_lambda": "input validation",
    "returns_truncated_series": "drops terms once gamma^k < 1e-7, past ~150 tokens at gamma = 0.9; "
                                "the sheet's responses are at most 5 tokens long",
}


def _sections_with(monkeypatch, mutant: str, parts) -> Ledger:
    m = MUTANTS[mutant]
    monkeypatch.setattr(refimpl, m.replaces, m.fn)
    led = Ledger()
    for part in parts:
        _run(led, part)
    return led


def _run(led: Ledger, part) -> None:
    """A part of the sheet; the figures (or the committed runs) it takes are given empty."""
    extra = len(inspect.signature(part).parameters) - 1
    run_section(led, part, *([{}] * extra))


def test_the_committed_sheet_is_up_to_date_and_every_claim_holds(capsys):
    rc = main(["sheet", "--out", str(ROOT / "docs" / "sheet.md"), "--check"])
    out, err = capsys.readouterr()
    assert rc == 0, (f"docs/sheet.md is stale or a claim fails: run `rlconform sheet --out "
                     f"docs/sheet.md`\n{err[-3000:]}")
    assert "computed claims hold" in out


@pytest.mark.parametrize("mutant", sorted(SEEN))
def test_a_broken_refimpl_function_fails_a_claim_of_the_sheet(monkeypatch, mutant):
    led = _sections_with(monkeypatch, mutant, SEEN[mutant])
    assert led.failures, (f"mutant {mutant} ({MUTANTS[mutant].bug}) left every claim of "
                          f"{[p.__qualname__ for p in SEEN[mutant]]} standing")


def test_the_same_parts_hold_on_refimpl():
    """(The whole sheet's claims are checked by the first test; this one guards the mutant map:
    each part it names runs without a failure on refimpl.)"""
    led = Ledger()
    for part in {p for parts in SEEN.values() for p in parts}:
        _run(led, part)
    assert not led.failures, [(c.text, c.detail) for c in led.failures]


def test_unseen_mutants_are_declared_and_exist():
    assert set(UNSEEN) <= set(MUTANTS) and set(SEEN) <= set(MUTANTS)
    assert not set(UNSEEN) & set(SEEN)


def test_the_generator_exits_1_and_marks_the_claim_when_gae_is_broken(monkeypatch, tmp_path,
                                                                     capsys):
    """The command's exit status and marks, with GAE broken. The sections that do not touch GAE
    are stubbed to keep the default run short (each is generated in full by the first test)."""
    from conformance.sheet import flags, hyperparameters
    for module in (decisions, variance, hyperparameters, questions, flags):
        monkeypatch.setattr(module, "section", lambda led, figs: "")
    monkeypatch.setattr(refimpl, "gae", MUTANTS["gae_forward_accumulation"].fn)
    out = tmp_path / "sheet.md"
    rc = main(["sheet", "--out", str(out), "--no-figures"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert "FAILED [Core equations] gae against the explicit sum" in err
    assert "**FAILED" in out.read_text()


def test_sheet_command_line_mistakes_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["sheet", "--out", str(tmp_path), "--no-figures"]) == 2
    assert main(["sheet", "--out", str(tmp_path / "missing.md"), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("rlconform: ") for line in err)
