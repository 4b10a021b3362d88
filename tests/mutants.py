"""The mutant zoo, as the tests see it: every mutant of the harness (each defined beside the
checks that reject it, in its concept module under ``conformance/checks/``) plus the mutants of
``refimpl.tabular``'s baselines, which only the exact tests here use.

A test that cannot fail is worthless, so every test in this suite is run twice over: once against
refimpl, where it must pass, and once against each mutant it names (``@against(...)`` in
``tests/harness.py``), where it must fail with an assertion. ``tests/test_mutants.py`` checks
that every mutant is killed by at least one test or check.
"""

from __future__ import annotations

import torch

import conformance.checks  # noqa: F401  (registers every check and its mutants)
from conformance.checks.templates import GENERIC_BUGS, MUTANTS, Mutant, get, mutant
from conformance.checks.templates import mutant_adapter as adapter
from refimpl import tabular

# --- the tabular baselines -----------------------------------------------------------------------

@mutant("baseline_constant", "a running-mean baseline updated with the current sample before "
        "it is subtracted")
def constant_baseline_updated_with_sample(R, b):
    n_before = 3.0
    return R - (n_before * b + R) / (n_before + 1)


@mutant("baseline_value", "baseline read at the next state V(s_{t+1}), which depends on the action")
def value_baseline_reads_next_state(returns, values):
    nxt = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    return returns - nxt


# The tabular baselines are looked up through the harness's subject, like refimpl functions.
BASELINE_NAMES = tuple(n for n in tabular.__all__ if n.startswith("baseline_"))



__all__ = ["GENERIC_BUGS", "MUTANTS", "Mutant", "adapter", "get", "mutant"]
