"""The mutant zoo is complete and honest: every mutant is a drop-in replacement (same argument
names as the function it breaks) and is killed by at least one test."""

import importlib
import inspect
import pathlib

import refimpl
from refimpl import tabular
from tests import harness
from tests.mutants import MUTANTS


def _import_all_tests():
    for path in sorted(pathlib.Path(__file__).parent.glob("test_*.py")):
        importlib.import_module(f"tests.{path.stem}")


def test_every_mutant_is_killed_by_some_test():
    """Named by an ``@against`` test, or by a registry check (then
    ``tests/test_conformance.py`` asserts that the check fails on it)."""
    from conformance.checks import all_checks

    _import_all_tests()
    used = harness.USED_MUTANTS | {m for c in all_checks(thorough=True, slow=True) for m in c.mutants}
    unused = sorted(set(MUTANTS) - used)
    assert not unused, f"mutants no test names (each must be rejected somewhere): {unused}"


def test_the_zoo_holds_at_least_thirty_mutants():
    assert len(MUTANTS) >= 30, f"only {len(MUTANTS)} mutants"


def test_every_mutant_has_the_signature_of_the_function_it_replaces():
    bad = []
    for m in MUTANTS.values():
        target = getattr(refimpl, m.replaces, None) or getattr(tabular, m.replaces)
        want = list(inspect.signature(target).parameters)
        got = list(inspect.signature(m.fn).parameters)
        if got != want and got != ["args", "kw"]:
            bad.append(f"{m.name}: {got}, but should be {want}")
    assert not bad, "mutants must be drop-in replacements:\n  " + "\n  ".join(bad)
