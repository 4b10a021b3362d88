"""The test harness: run every test against refimpl and against the mutants it must kill.

``@against("mutant_a", "mutant_b")`` parametrizes a test over a *subject* ``rf``: refimpl itself
(the test must pass) and each named mutant (``tests/mutants.py``: the harness's mutants, defined beside their checks in ``conformance/checks/``, plus the tabular ones) (the test must fail with an
``AssertionError`` or a ``pytest.fail``; a mutant that survives fails the test run, naming the
bug it models). A test reaches every function under test through ``rf``: ``rf.gae(...)``,
``rf.baseline_leave_one_out(...)``; oracles that must stay correct are imported directly.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from hypothesis import Phase, settings

import refimpl
from refimpl import tabular
from tests.mutants import MUTANTS

USED_MUTANTS: set[str] = set()


class Subject:
    """refimpl's functions, with at most one replaced by a mutant."""

    def __init__(self, mutant: str | None = None):
        self.mutant = mutant
        self._override = {}
        if mutant is not None:
            mt = MUTANTS[mutant]
            self._override[mt.replaces] = mt.fn

    def __getattr__(self, name):
        if name in self._override:
            return self._override[name]
        if hasattr(refimpl, name):
            return getattr(refimpl, name)
        return getattr(tabular, name)

    def __repr__(self):
        return "refimpl" if self.mutant is None else f"mutant:{self.mutant}"


def _killed(exc: BaseException) -> bool:
    if isinstance(exc, (AssertionError, pytest.fail.Exception)):
        return True
    if isinstance(exc, BaseExceptionGroup):                  # Hypothesis: several failures
        return all(_killed(e) for e in exc.exceptions)
    return False


#: Hypothesis phases without shrinking: a run that only asks whether a mutant fails
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@contextlib.contextmanager
def _first_failure_only(test):
    """A Hypothesis test run on a mutant stops at its first failing example: whether it fails is
    the question, and shrinking the example (for a readable report) took most of the time."""
    current = getattr(test, "_hypothesis_internal_use_settings", None)
    if current is None:
        yield
        return
    test._hypothesis_internal_use_settings = settings(current, phases=NO_SHRINK)
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = current


def against(*mutants: str):
    """Run the test on refimpl (must pass) and on each mutant (must fail by assertion)."""
    for name in mutants:
        if name not in MUTANTS:
            raise KeyError(f"unknown mutant {name!r}; define it beside its checks in conformance/checks/ (or, for the tabular oracle, in tests/mutants.py)")
    USED_MUTANTS.update(mutants)
    params = [pytest.param(Subject(), id="refimpl")]
    params += [pytest.param(Subject(n), id=f"mutant-{n}") for n in mutants]

    def decorate(test):
        @functools.wraps(test)
        def run(rf, *args, **kwargs):
            if rf.mutant is None:
                return test(rf, *args, **kwargs)
            try:
                with _first_failure_only(test):
                    test(rf, *args, **kwargs)
            except BaseException as exc:                      # noqa: BLE001
                if _killed(exc):
                    return
                raise AssertionError(
                    f"mutant {rf.mutant} made the test crash with {type(exc).__name__}: {exc}; "
                    "a test must reject a mutant by an assertion, not by accident") from exc
            pytest.fail(f"mutant {rf.mutant} survived: this test does not detect "
                        f"'{MUTANTS[rf.mutant].bug}'")
        return pytest.mark.parametrize("rf", params)(run)
    return decorate


# --- inputs --------------------------------------------------------------------------------------

def lengths_mask(lengths, T) -> torch.Tensor:
    """``(B, T)`` bool mask whose row b has ``lengths[b]`` real tokens."""
    lengths = torch.as_tensor(lengths)
    return torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)


def fill_padding(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """A copy of ``x`` with ``value`` (NaN, inf, 1e30) at every padded position."""
    return torch.where(mask, x, torch.full_like(x, value))


def randn(gen: torch.Generator, *shape, dtype=torch.float64, scale=1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=gen, dtype=dtype)


def assert_close(actual, expected, tol, what=""):
    """Assert ``actual`` equals ``expected`` within ``tol`` (absolute), with a readable message."""
    if isinstance(actual, torch.Tensor):
        actual = actual.detach()
    if isinstance(expected, torch.Tensor):
        expected = expected.detach()
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, but should be {tuple(expected.shape)}"
    err = (actual - expected).abs()
    bad = ~(err <= tol)                     # NaN counts as bad
    assert not bool(bad.any()), (
        f"{what}: max abs error {float(err.nan_to_num(float('inf')).max()):.3e} > tol {tol:g}; "
        f"first bad entry {tuple(int(i) for i in bad.nonzero()[0])}: "
        f"{float(actual[bad][0]):.12g}, but should be {float(expected[bad][0]):.12g}")


class Padded:
    """A random right-padded batch: ``mask (B, T)`` plus a seeded source of tensors."""

    def __init__(self, lengths, T, seed, dtype):
        self.lengths = list(lengths)
        self.B, self.T = len(self.lengths), T
        self.mask = lengths_mask(self.lengths, T)
        self.dtype = dtype
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)

    def randn(self, *shape, scale=1.0):
        shape = shape or (self.B, self.T)
        return scale * torch.randn(*shape, generator=self._gen, dtype=torch.float64).to(self.dtype)

    def uniform(self, lo, hi, *shape):
        shape = shape or (self.B, self.T)
        u = torch.rand(*shape, generator=self._gen, dtype=torch.float64)
        return (lo + (hi - lo) * u).to(self.dtype)

    def __repr__(self):
        return f"Padded(lengths={self.lengths}, T={self.T}, seed={self.seed}, dtype={self.dtype})"


def padded_batches(max_B=5, max_T=6, dtypes=(torch.float32, torch.float64), min_B=1,
                   equal_lengths=False):
    """Hypothesis strategy of ``Padded`` batches with unequal lengths (one-token rows included)."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw):
        B = draw(st.integers(min_B, max_B))
        T = draw(st.integers(1, max_T))
        if equal_lengths:
            n = draw(st.integers(1, T))
            lengths = [n] * B
        else:
            lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        seed = draw(st.integers(0, 2 ** 32 - 1))
        dtype = draw(st.sampled_from(dtypes))
        return Padded(lengths, T, seed, dtype)
    return build()
