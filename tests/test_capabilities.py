"""What an adapter honours is data the harness reads (docs/contract.md, "Capabilities"): a check
is ``skip`` only when the option it is about is not honoured; any other option is replaced by one
the variant honours, so a validation check still runs on a variant that aggregates one way only.

The adapters here are refimpl wrapped so that a call with an option the variant does not honour
is a loud ``AssertionError`` (an ``error`` row): if the harness stopped fitting calls to the
capabilities, these tests would see errors instead of passes."""

import inspect

import pytest

import refimpl
from conformance.checks import all_checks
from conformance.contract import capability, declaration_errors
from conformance.registry import REGISTRY
from conformance.runner import run_check, unmatched_declarations

CHECKS = all_checks()
OPTION = {"agg": "agg", "mode": "agg", "scale": "scale", "kind": "kl_kind"}


def _strict(name: str, capabilities: dict):
    """refimpl, honouring only ``capabilities``; anything else raises AssertionError."""
    attrs = {"name": name, "capabilities": capabilities}

    def wrap(fn_name):
        fn = getattr(refimpl, fn_name)
        sig = inspect.signature(fn)

        def call(*args, **kwargs):
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            for arg, cap in OPTION.items():
                value = bound.arguments.get(arg)
                honoured = capability(Adapter, cap, fn_name)
                vocabulary = capability(object(), cap)
                assert value not in vocabulary or value in honoured, (
                    f"{fn_name} called with {arg}={value!r}, which {name} does not honour")
            if bound.arguments.get("dual_clip") is not None:
                assert capability(Adapter, "dual_clip") is True, "dual_clip passed to a variant without it"
            return fn(*args, **kwargs)
        return staticmethod(call)

    attrs.update({f: wrap(f) for f in refimpl.CANONICAL})
    Adapter = type(name, (), attrs)
    return Adapter()


SUM_ONLY = _strict("sum-only", {"agg": ["seq-mean-token-sum"], "dual_clip": False})
K3_ONLY = _strict("k3-only", {"kl_kind": ["k3"], "scale": ["group", "none"],
                              "unequal_groups": False})
CRITIC_TOKEN_MEAN = _strict("critic-token-mean", {"value_loss.agg": ["token-mean"]})


def _row(check_id, adapter):
    return run_check(REGISTRY[check_id], adapter)


@pytest.mark.parametrize("check_id", [
    "aggregate/rejects-mask-with-hole",                 # validation, called with token-mean
    "policy_gradient_loss/rejects-unknown-agg",
    "ppo_clip_loss/gradient-zero-when-clipped",          # about clipping; expected weights per mode
    "ppo_clip_loss/gradient-equals-policy-gradient-at-old-policy",
    "value_loss/gradient-zero-when-clipped",
    "ppo_clip_loss/padding-nan",
])
def test_a_check_not_about_the_mode_runs_in_the_mode_the_variant_honours(check_id):
    row = _row(check_id, SUM_ONLY)
    assert row["status"] == "pass", f"{check_id} on a seq-mean-token-sum-only variant: {row}"


@pytest.mark.parametrize("check_id", [
    "aggregate/modes-agree-on-equal-lengths",           # about the modes themselves
    "policy_gradient_loss/exact-policy-gradient-theorem",
])
def test_a_check_about_an_unhonoured_mode_is_skipped_with_the_reason(check_id):
    row = _row(check_id, SUM_ONLY)
    assert row["status"] == "skip", row
    assert "does not honour" in row["message"] and "capabilities" in row["message"], row


def test_an_option_the_check_is_about_skips_only_that_variant():
    row = _row("kl_estimate/matches-reference", K3_ONLY)     # k1 and k2 variants skipped
    assert row["status"] == "pass", row
    assert "does not honour kind='k1'" in row["note"], row
    row = _row("kl_estimate/exact-expectations", K3_ONLY)
    assert row["status"] == "pass" and "2 variant(s) unsupported" in row["note"], row
    assert _row("kl_estimate/large-log-ratios", K3_ONLY)["status"] == "pass"


def test_a_boolean_capability_skips_the_variants_that_set_the_option():
    row = _row("ppo_clip_loss/matches-reference", SUM_ONLY)  # the dual_clip=3 variant skipped
    assert row["status"] == "pass" and "dual_clip=3.0" in row["note"], row
    row = _row("ppo_clip_loss/rejects-dual-clip-at-most-one", SUM_ONLY)
    assert row["status"] == "skip" and "dual_clip" in row["message"], row


def test_groups_of_unequal_size_are_skipped_unless_the_check_is_about_them():
    row = _row("group_normalized_advantages/matches-reference", K3_ONLY)
    assert row["status"] == "pass" and "equal size only" in row["note"], row
    # the group-of-one check is about group_ids: it runs (and refimpl rejects the group of one)
    assert _row("group_normalized_advantages/rejects-group-of-one", K3_ONLY)["status"] == "pass"


def test_a_capability_narrowed_for_one_function_applies_to_that_function_only():
    assert _row("value_loss/matches-reference", CRITIC_TOKEN_MEAN)["status"] == "pass"
    assert _row("value_loss/gradient-zero-when-clipped", CRITIC_TOKEN_MEAN)["status"] == "pass"
    row = _row("ppo_clip_loss/matches-reference", CRITIC_TOKEN_MEAN)
    assert row["status"] == "pass" and not row["note"], row        # every mode still runs


def test_an_adapter_without_capabilities_is_called_exactly_as_before():
    # (the training checks call train_step, which this adapter of canonical functions lacks)
    rows = [run_check(c, _strict("everything", {})) for c in CHECKS if c.kind != "training"]
    bad = [f"{r['id']}: {r['status']} {r['message']}" for r in rows if r["status"] != "pass"]
    assert not bad, "\n".join(bad)


def test_declarations_outside_the_vocabulary_are_reported():
    class Odd:
        name = "odd"
        capabilities = {"agg": ["token-sum"], "dual": True, "value_loss.scale": "group",
                        "norm_len": "yes"}
    errors = declaration_errors(Odd)
    assert any("'token-sum' is not one of" in e for e in errors), errors
    assert any("'dual' is not a capability" in e for e in errors), errors
    assert any("value_loss.scale" in e and "list" in e for e in errors), errors
    assert any("norm_len" in e and "True or False" in e for e in errors), errors
    assert set(errors) <= set(unmatched_declarations(Odd, CHECKS))
    with pytest.raises(ValueError, match="unknown capability"):
        capability(Odd, "no-such")


def test_an_output_of_another_float_dtype_is_compared_at_its_precision_and_judged_only_by_dtype_kept():
    """docs/contract.md: outputs come back uncast; only */dtype-kept judges the output dtype."""
    class Float32Out:
        name = "float32-out"

        @staticmethod
        def kl_estimate(*args, **kwargs):
            return refimpl.kl_estimate(*args, **kwargs).float()

    rows = {c.id: run_check(c, Float32Out()) for c in CHECKS if c.estimator == "kl_estimate"}
    assert rows["kl_estimate/dtype-kept"]["status"] == "fail", rows["kl_estimate/dtype-kept"]
    for check_id in ("kl_estimate/matches-reference", "kl_estimate/padding-nan"):
        row = rows[check_id]
        assert row["status"] == "pass", row
        assert "output float32 for float64 input" in row["note"], row
    assert rows["kl_estimate/exact-expectations"]["status"] == "pass"   # float32 tolerance
