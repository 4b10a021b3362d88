"""Verdicts a reader can act on (docs/contract.md, "Certification, statuses, reports"):

- "float32-accurate" means the result equals refimpl computed in float32 on the same inputs,
  within float32 rounding; an eps of another size or in another place computed in float64 is a
  fail, however small, and an explicit tolerance is never loosened;
- every fail and xfail row carries the class of what it does to a user (gradient, value,
  padding, validation, precision); a loss whose value differs while its gradient agrees is
  ``value``;
- rows name the declared deviation, the upstream tracker and a qualified pass.

The adapters here are refimpl with one function broken the way a framework breaks it."""

import pytest
import torch

import refimpl
from conformance.checks import all_checks
from conformance.checks.templates import GROUPS, group_scores, mutant_adapter
from conformance.context import CheckFailed, Context
from conformance.contract import declaration_errors
from conformance.registry import REGISTRY, Check
from conformance.runner import certify, run_check, unmatched_declarations

CHECKS = all_checks()
F32, F64 = torch.float32, torch.float64


def _adapter(name="broken", **functions):
    """refimpl as an adapter, with ``functions`` (name -> callable) replacing its own."""
    attrs = {f: staticmethod(getattr(refimpl, f)) for f in refimpl.CANONICAL}
    attrs.update({k: staticmethod(v) if callable(v) else v for k, v in functions.items()})
    attrs["name"] = name
    return type("Broken", (), attrs)()


def _row(check_id, adapter):
    return run_check(REGISTRY[check_id], adapter)


def _in_float32(fn_name):
    """The function computed in float32 and cast back to the input's dtype (a framework that
    casts to float32 inside)."""
    fn = getattr(refimpl, fn_name)

    def run(*args, **kwargs):
        dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
        cast = [a.to(F32) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                for a in args]
        out = fn(*cast, **kwargs)
        return tuple(o.to(dtype) for o in out) if isinstance(out, tuple) else out.to(dtype)
    return run


# --- 1. float32-accurate means refimpl in float32 ------------------------------------------------

def _group_eps(eps):
    def run(scores, group_ids, scale="group", eps_=None, **kwargs):
        return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    return run


@pytest.mark.parametrize("eps", [1e-8, 1e-9])
def test_a_group_eps_of_another_size_in_float64_fails(eps):
    row = _row("group_normalized_advantages/matches-reference",
               _adapter(group_normalized_advantages=_group_eps(eps)))
    assert row["status"] == "fail", row
    assert row["class"] == "gradient", row


def test_the_small_group_std_sample_shows_an_eps_of_another_size_in_float32_arithmetic():
    """On groups of std ~1, eps 1e-8 against 1e-6 moves an advantage by ~1e-6 relative, inside
    float32 rounding (2e-5): computed in float32 and cast back, it would pass as
    float32-accurate. On the groups of std 1e-3 and 1e-4 it moves them by ~1e-2."""
    def float32_eps(scores, group_ids, scale="group", eps=1e-6):
        out = refimpl.group_normalized_advantages(scores.float(), group_ids, scale, 1e-8)
        return out.to(scores.dtype)
    row = _row("group_normalized_advantages/matches-reference",
               _adapter(group_normalized_advantages=float32_eps))
    assert row["status"] == "fail", row
    ctx = _ctx()
    assert {"small_group_std", "equal_groups_interleaved"} <= {s.name for s in GROUPS}
    for sample in GROUPS:
        scores, ids = group_scores(ctx, sample)
        moved = float((refimpl.group_normalized_advantages(scores, ids, eps=1e-8)
                       - refimpl.group_normalized_advantages(scores, ids)).abs().max())
        if sample.name == "small_group_std":
            assert moved > 1e-3, (sample.label, moved)
        elif sample.name == "equal_groups_interleaved":
            assert moved < 2e-5, (sample.label, moved)          # hidden by float32 rounding


def test_an_eps_in_another_place_in_float64_fails():
    """Whitening by (A - mu) / (sqrt(var) + eps) instead of / sqrt(var + eps): relative
    difference ~1e-9, far above float64 rounding, far below the old 2e-5 escape."""
    def whiten_eps_outside(advantages, mask=None, eps=1e-8):
        m = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask
        zero = torch.zeros_like(advantages)
        A = torch.where(m, advantages, zero)
        n = m.sum().to(A.dtype)
        mu = A.sum() / n
        var = torch.where(m, (A - mu) ** 2, zero).sum() / (n - 1)
        return torch.where(m, (A - mu) / (var.sqrt() + eps), zero)
    row = _row("batch_normalized_advantages/matches-reference",
               _adapter(batch_normalized_advantages=whiten_eps_outside))
    assert row["status"] == "fail", row


def test_a_count_plus_eps_divisor_in_float64_fails():
    """aggregate dividing by mask.sum() + 1e-8 (a common guard): a difference, not rounding."""
    def aggregate(x, mask, mode="token-mean", norm_len=None):
        if mode != "token-mean":
            return refimpl.aggregate(x, mask, mode, norm_len)
        return torch.where(mask, x, torch.zeros_like(x)).sum() / (mask.sum().to(x.dtype) + 1e-8)
    row = _row("aggregate/matches-reference", _adapter(aggregate=aggregate))
    assert row["status"] == "fail", row
    # off by ~1e-9 relative on every sample: no more than a float32 computation would be, so
    # its class says "precision level" (docs/contract.md); the status is a fail all the same
    assert row["class"] == "precision", row


def test_the_all_equal_check_keeps_its_tolerance():
    """A residue of 1e-7 on an all-equal group is below the old 2e-5 escape, above the
    check's own tolerance (1e-9)."""
    def residue(scores, group_ids, scale="group", eps=1e-6):
        return refimpl.group_normalized_advantages(scores, group_ids, scale, eps) + 1e-7
    row = _row("group_normalized_advantages/all-equal-group-gives-zero",
               _adapter(group_normalized_advantages=residue))
    assert row["status"] == "fail", row
    assert "float32-accurate" not in (row["note"] or ""), row


@pytest.mark.parametrize("fn_name,check_ids", [
    ("kl_estimate", ("kl_estimate/matches-reference", "kl_estimate/gradient-matches-reference")),
    ("group_normalized_advantages", ("group_normalized_advantages/matches-reference",)),
    ("ppo_clip_loss", ("ppo_clip_loss/matches-reference",
                       "ppo_clip_loss/gradient-matches-reference")),
])
def test_a_float32_computation_cast_back_passes_with_the_note(fn_name, check_ids):
    adapter = _adapter(**{fn_name: _in_float32(fn_name)})
    for check_id in check_ids:
        row = _row(check_id, adapter)
        assert row["status"] == "pass", row
        assert "float32-accurate (max rel err" in row["note"], row


def _ctx(check_id="group_normalized_advantages/matches-reference"):
    return Context(REGISTRY[check_id], refimpl)


def test_compare_accepts_float32_arithmetic_only_where_it_equals_refimpl_in_float32():
    """Scores near 1 spread by 1e-3: float32 rounding of the inputs alone moves the advantages
    by ~1e-4 relative, above any fixed escape; refimpl in float32 on the same inputs is what
    tells rounding from a difference."""
    g = torch.Generator().manual_seed(0)
    scores = 1.0 + 1e-3 * torch.randn(8, generator=g, dtype=F64)
    ids = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    want = refimpl.group_normalized_advantages(scores, ids)
    want32 = refimpl.group_normalized_advantages(scores.float(), ids)
    got = want32.double()                                    # float32 arithmetic, cast back
    assert float(((got - want).abs()).max()) > 2e-5          # the old escape would not help
    ctx = _ctx()
    ctx.compare(got, want, "advantages", expected32=want32)
    assert any(n.startswith("float32-accurate (max rel err") for n in ctx.notes), ctx.notes
    with pytest.raises(CheckFailed):                         # no expected32: no escape
        _ctx().compare(got, want, "advantages")
    other = refimpl.group_normalized_advantages(scores.float(), ids, eps=1e-8).double()
    with pytest.raises(CheckFailed):                         # float32, but another eps
        _ctx().compare(other, want, "advantages", expected32=want32)
    with pytest.raises(CheckFailed):                         # near expected32, not float32 numbers
        _ctx().compare(want32.double() + 1e-12, want, "advantages", expected32=want32)


def test_a_float32_output_is_compared_with_refimpl_in_float32_at_float32_tolerance():
    g = torch.Generator().manual_seed(1)
    scores = 1.0 + 1e-3 * torch.randn(8, generator=g, dtype=F64)
    ids = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    want = refimpl.group_normalized_advantages(scores, ids)
    want32 = refimpl.group_normalized_advantages(scores.float(), ids)
    ctx = _ctx()
    ctx.compare(want32, want, "advantages", expected32=want32)     # passes: same as refimpl32
    with pytest.raises(CheckFailed):
        ctx.compare(want32 * 1.001, want, "advantages", expected32=want32)


def test_an_uncast_float32_output_fails_dtype_kept_only():
    def float32_out(*args, **kwargs):
        return refimpl.group_normalized_advantages(*args, **kwargs).float()
    adapter = _adapter(group_normalized_advantages=float32_out)
    kept = _row("group_normalized_advantages/dtype-kept", adapter)
    assert kept["status"] == "fail" and kept["class"] == "precision", kept
    row = _row("group_normalized_advantages/matches-reference", adapter)
    assert row["status"] == "pass" and "output float32 for float64 input" in row["note"], row


# --- 2. the class of every fail and xfail row ----------------------------------------------------

@pytest.mark.parametrize("check_id,mutant,cls", [
    ("ppo_clip_loss/dtype-kept", "ppo_clip_loss~float32_out", "precision"),
    ("kl_estimate/padding-nan", "kl_estimate~nan_through_mask", "padding"),
    ("dpo_loss/rejects-nonpositive-beta", "dpo_loss~swallows_errors", "validation"),
    ("ppo_clip_loss/matches-reference", "ppo_clip_loss~scaled", "gradient"),
    ("gae/matches-reference", "gae~scaled", "gradient"),
    ("kl_estimate/no-input-mutation", "kl_estimate~in_place", None),
])
def test_each_failure_gets_its_class(check_id, mutant, cls):
    row = _row(check_id, mutant_adapter(mutant))
    assert row["status"] == "fail", row
    assert row["class"] == cls, row


def _offset(fn_name, offset):
    """The loss plus a constant: the value differs, the gradient does not (a surrogate's value
    convention, e.g. a loss reported without its constant term)."""
    fn = getattr(refimpl, fn_name)
    return lambda *a, **k: fn(*a, **k) + offset


@pytest.mark.parametrize("fn_name", ["ppo_clip_loss", "policy_gradient_loss", "dpo_loss"])
def test_a_loss_whose_value_alone_differs_is_value_class(fn_name):
    row = _row(f"{fn_name}/matches-reference", _adapter(**{fn_name: _offset(fn_name, 0.25)}))
    assert row["status"] == "fail" and row["class"] == "value", row
    assert _row(f"{fn_name}/gradient-matches-reference",
                _adapter(**{fn_name: _offset(fn_name, 0.25)}))["status"] == "pass"


def test_a_loss_whose_gradient_differs_too_is_gradient_class():
    def half_detached(logp, *args, **kwargs):        # value right, half the gradient
        out = refimpl.ppo_clip_loss(logp, *args, **kwargs)
        return 1.5 * out - 0.5 * out.detach() + 0.01 * out.detach()
    row = _row("ppo_clip_loss/matches-reference", _adapter(ppo_clip_loss=half_detached))
    assert row["status"] == "fail" and row["class"] == "gradient", row


def test_an_explicit_class_of_the_failure_wins():
    def body(ctx):
        raise CheckFailed("by hand", sample="s", cls="value")
    chk = Check(id="group_normalized_advantages/test-explicit-class",
                estimator="group_normalized_advantages", kind="reference",
                section="returns-and-advantages", equation="-", hint="-", body=body)
    assert chk.cls == "gradient"
    assert run_check(chk, refimpl)["class"] == "value"
    with pytest.raises(ValueError, match="unknown class"):
        Check(id="gae/x", estimator="gae", kind="reference", section="returns-and-advantages",
              equation="-", hint="-", body=body, cls="cosmetic")


def test_derived_classes_of_the_registry():
    assert REGISTRY["gae/dtype-kept"].cls == "precision"
    assert REGISTRY["gae/no-input-mutation"].cls is None
    assert REGISTRY["kl_estimate/padding-1e30"].cls == "padding"
    assert all(c.cls == "validation" for c in CHECKS if c.kind == "input")
    assert REGISTRY["gae/matches-reference"].cls == "gradient"


def test_xfail_keeps_its_class_stale_and_pass_rows_have_none(tmp_path):
    adapter = mutant_adapter("ppo_clip_loss~scaled")
    adapter.known_deviations = {"ppo_clip_loss/matches-reference": "scales the loss (acme.py:1)",
                                "gae/matches-reference": "a stale one (acme.py:2)"}
    data = certify(adapter, tmp_path, isolate=False, pattern="[pg][pa][oe]*")
    rows = {r["id"]: r for r in data["checks"]}
    x = rows["ppo_clip_loss/matches-reference"]
    assert x["status"] == "xfail" and x["class"] == "gradient", x
    assert x["deviation"] == "scales the loss (acme.py:1)", x
    stale = rows["gae/matches-reference"]
    assert stale["status"] == "fail" and stale["class"] is None, stale
    assert stale["deviation"] == "a stale one (acme.py:2)", stale
    ok = rows["gae/gradient-matches-reference"]
    assert ok["status"] == "pass" and ok["class"] is None and ok["deviation"] is None, ok


def test_an_error_row_takes_no_class():
    def boom(*args, **kwargs):
        raise RuntimeError("boom")
    row = _row("ppo_clip_loss/matches-reference", _adapter(ppo_clip_loss=boom))
    assert row["status"] == "error" and row["class"] is None, row


# --- 3. upstream and qualified -------------------------------------------------------------------

def test_upstream_is_shown_on_the_rows_its_glob_matches():
    adapter = mutant_adapter("ppo_clip_loss~scaled")
    adapter.known_deviations = {"ppo_clip_loss/matches-*": "scales the loss (acme.py:1)"}
    adapter.upstream = {"ppo_clip_loss/matches-*": "https://github.com/acme/acme/issues/1",
                        "no_such/*": "https://github.com/acme/acme/issues/2"}
    row = _row("ppo_clip_loss/matches-reference", adapter)
    assert row["upstream"] == "https://github.com/acme/acme/issues/1", row
    assert _row("ppo_clip_loss/dtype-kept", adapter)["upstream"] is None
    assert any("upstream key 'no_such/*' matches no check id" in w
               for w in unmatched_declarations(adapter, CHECKS))


def test_a_qualified_pass_says_so_first_and_a_qualified_failure_is_unchanged():
    sentence = "one-token completions hide the length normalisation (acme.py:3)"
    adapter = mutant_adapter("ppo_clip_loss~scaled")
    adapter.qualified = {"ipo_loss/matches-*": sentence, "ppo_clip_loss/matches-*": sentence,
                         "nothing/*": sentence}
    row = _row("ipo_loss/matches-reference", adapter)
    assert row["status"] == "pass" and row["qualified"] == sentence, row
    assert row["note"].startswith(f"qualified: {sentence}"), row
    bad = _row("ppo_clip_loss/matches-reference", adapter)
    assert bad["status"] == "fail" and bad["qualified"] is None, bad
    assert "qualified" not in (bad["note"] or ""), bad
    assert _row("ipo_loss/dtype-kept", adapter)["qualified"] is None
    assert any("qualified key 'nothing/*' matches no check id" in w
               for w in unmatched_declarations(adapter, CHECKS))


def test_qualified_and_upstream_declarations_are_validated():
    class Odd:
        name = "odd"
        qualified = {"ipo_loss/*": 3}
        upstream = ["https://example.org"]
    errors = declaration_errors(Odd)
    assert any("qualified['ipo_loss/*']" in e for e in errors), errors
    assert any("upstream should be a dict" in e for e in errors), errors
    assert set(errors) <= set(unmatched_declarations(Odd, CHECKS))


# --- lower precision is its own class; a valid edge value refused is a fail ---------------------

def _float32_constant(clip_low=0.2, **unused):
    """PPO's clip bound held as a float32 constant inside a float64 computation (what a float32
    buffer does): the values are float64 but differ from refimpl's at float32 level."""
    def run(logp, old_logp, advantages, mask, clip_low=clip_low, clip_high=None, **kwargs):
        c = float(torch.tensor(clip_low, dtype=F32))
        h = None if clip_high is None else float(torch.tensor(clip_high, dtype=F32))
        return refimpl.ppo_clip_loss(logp, old_logp, advantages, mask, c, h, **kwargs)
    return run


def test_a_float32_constant_in_a_float64_computation_is_precision_class():
    row = _row("ppo_clip_loss/matches-reference", _adapter(ppo_clip_loss=_float32_constant()))
    assert row["status"] == "fail" and row["class"] == "precision", row


def test_an_eps_of_another_size_stays_gradient_class_not_precision():
    row = _row("group_normalized_advantages/matches-reference",
               _adapter(group_normalized_advantages=_group_eps(1e-8)))
    assert row["status"] == "fail" and row["class"] == "gradient", row


def test_raising_on_a_valid_edge_value_is_a_fail_not_an_error():
    def refuses_gamma_zero(rewards, mask, gamma=1.0):
        if gamma == 0:
            raise IndexError("tuple index out of range")
        return refimpl.discounted_returns(rewards, mask, gamma)
    row = _row("discounted_returns/gamma-zero-gives-rewards",
               _adapter(discounted_returns=refuses_gamma_zero))
    assert row["status"] == "fail" and "valid gamma = 0" in row["message"], row
    row = _row("discounted_returns/matches-reference",           # elsewhere a raise is an error
               _adapter(discounted_returns=lambda *a, **k: 1 / 0))
    assert row["status"] == "error", row


def test_a_value_check_that_differs_only_at_padding_is_padding_class():
    def leaks(rewards, mask, gamma=1.0):              # right on real tokens, 1 at padding
        out = refimpl.discounted_returns(rewards, mask, gamma)
        return torch.where(mask, out, torch.ones_like(out))
    row = _row("discounted_returns/matches-reference", _adapter(discounted_returns=leaks))
    assert row["status"] == "fail" and row["class"] == "padding", row


def test_a_probe_the_adapter_refuses_does_not_decide_the_class():
    from conformance import Unsupported
    inner = _float32_constant()

    def refuses_per_token_advantages(logp, old_logp, advantages, mask, *args, **kwargs):
        if advantages.dim() == 2:
            raise Unsupported("(B,) advantages only")
        return inner(logp, old_logp, advantages, mask, *args, **kwargs)
    row = _row("ppo_clip_loss/matches-reference",
               _adapter(ppo_clip_loss=refuses_per_token_advantages))
    assert row["status"] == "fail" and row["class"] == "precision", row


def test_a_gradient_that_differs_on_a_sample_the_check_did_not_reach_is_gradient_class():
    def offset_then_wrong_gradient(logp, *args, **kwargs):
        out = refimpl.ppo_clip_loss(logp, *args, **kwargs) + 0.25      # fails on the first sample
        if logp.shape[1] == 4:                                          # the full_rows sample only
            out = 2 * out - out.detach()
        return out
    row = _row("ppo_clip_loss/matches-reference", _adapter(ppo_clip_loss=offset_then_wrong_gradient))
    assert row["status"] == "fail" and row["class"] == "gradient", row
    assert _row("ppo_clip_loss/matches-reference", _adapter(ppo_clip_loss=_offset("ppo_clip_loss", 0.25)))["class"] == "value"
