"""The registry of checks: the ``Check`` record, the ``@check`` decorator and ``all_checks``.

A check is one registered function with a stable id (``ppo_clip_loss/gradient-zero-when-clipped``),
the canonical estimator it exercises, a kind, the section of the contract (``docs/contract.md``)
it enforces and the paper behind it, a tolerance with its reason, a hint for the implementer and
the mutants it must reject (defined beside it, in its concept module under
``conformance/checks/``). The same registry drives refimpl's tests, ``rlconform certify`` and the
pytest plugin. This module imports nothing else of the harness.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Callable

import torch

KINDS = ("reference", "property", "gradient", "input", "exact", "training")
STATUSES = ("pass", "fail", "error", "skip", "xfail")
#: what a non-pass does to a user, worst first (docs/contract.md, "Certification, statuses,
#: reports")
CLASSES = ("gradient", "value", "padding", "validation", "precision")
#: the loss estimators: a failing value comparison of theirs is re-run with gradients, to tell
#: a value-only difference (``value``) from one training sees (``gradient``)
LOSS_ESTIMATORS = ("policy_gradient_loss", "ppo_clip_loss", "value_loss", "dpo_loss", "ipo_loss",
                   "bradley_terry_loss", "aggregate")
CONTRACT = "docs/contract.md"


@dataclass(frozen=True)
class Tolerance:
    float64: float
    float32: float
    reason: str

    def of(self, dtype: torch.dtype) -> float:
        return self.float64 if dtype == torch.float64 else self.float32


DEFAULT_TOL = Tolerance(1e-10, 2e-5, "float64: a few ulps of sums over at most a few hundred "
                        "terms; float32: the same at single precision (eps 6e-8) with margin")


@dataclass(frozen=True)
class Check:
    id: str
    estimator: str
    kind: str
    section: str                            # anchor of a section of docs/contract.md
    equation: str
    hint: str
    body: Callable
    source: str = ""                        # the paper (title, year, arXiv id, section)
    tol: Tolerance = DEFAULT_TOL
    mutants: tuple[str, ...] = ()
    thorough: bool = False                  # the Hypothesis tier (--thorough)
    derivation: str = ""                    # for exact checks: `rlconform explain`
    consequence: str = ""                   # what a failure means for a user of the trainer
    file: str = ""                          # where the check is defined (repository-relative)
    line: int = 0
    cls: str | None = ""                    # class of a failure (CLASSES); "": derived, None: none
    slow: bool = False                      # a training run (--slow): minutes, not milliseconds
    timeout: float = 0.0                    # seconds a worker may take on it (0: the run's default)

    def __post_init__(self):
        if not self.consequence:
            object.__setattr__(self, "consequence", default_consequence(self))
        if self.cls == "":
            object.__setattr__(self, "cls", default_class(self))
        if self.cls is not None and self.cls not in CLASSES:
            raise ValueError(f"check {self.id}: unknown class {self.cls!r}; one of {CLASSES}")
        if self.kind not in KINDS:
            raise ValueError(f"check {self.id}: unknown kind {self.kind!r}")
        if not self.id.startswith(self.estimator + "/") and self.kind != "training":
            raise ValueError(f"check {self.id}: id must start with its estimator {self.estimator!r}")
        if not self.section or "#" in self.section or " " in self.section:
            raise ValueError(f"check {self.id}: section must be an anchor of {CONTRACT}, "
                             f"got {self.section!r}")

    @property
    def clause(self) -> str:
        """The contract section, then the paper: what a report row's ``clause`` says."""
        where = f"{CONTRACT}#{self.section}"
        return f"{where}; {self.source}" if self.source else where


def default_consequence(chk: "Check") -> str:
    """What a non-pass of this kind of check means for someone training with the framework."""
    name = chk.id.split("/", 1)[1]
    if name.startswith("padding-nan") or name.startswith("padding-inf"):
        return "NaN or inf at a padded position reaches the outputs or gradients (a poisoned step)"
    if name.startswith("padding-1e30"):
        return "finite garbage at padded positions changes the result: padding is read"
    if name == "no-input-mutation":
        return "the caller's tensors change under it; reusing them (logging, a second epoch) is wrong"
    if name == "dtype-kept":
        return "float64 runs silently drop to another precision"
    if chk.kind == "input":
        return "invalid input is answered with a silent number instead of an error"
    if chk.kind == "gradient":
        return "the update direction differs from the equation's, although the loss value may agree"
    if chk.kind == "exact":
        return "the expected update differs from the one the equation promises (bias)"
    return "values differ from the contract's definition: runs are not comparable across frameworks"


def default_class(chk: "Check") -> str | None:
    """The class of a failure of ``chk`` unless the check or the failure says otherwise: the
    output dtype is ``precision``, invalid input accepted ``validation``, padding that leaks
    ``padding``, a mutated input none (its status says it); any other wrong value or gradient
    is what training sees, ``gradient`` (for a loss estimator the runner re-runs the failing
    call with gradients, and a value-only difference becomes ``value``)."""
    if chk.id.endswith("/dtype-kept"):
        return "precision"
    if chk.id.endswith("/no-input-mutation"):
        return None
    if chk.kind == "input":
        return "validation"
    if chk.section == "padding-invariance":
        return "padding"
    return "gradient"


REGISTRY: dict[str, Check] = {}


def _where(fn) -> tuple[str, int]:
    try:
        path = inspect.getsourcefile(fn) or ""
        line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return "", 0
    return _relative(path, line)


def _relative(path: str, line: int) -> tuple[str, int]:
    """``conformance/...`` from an absolute path (installed or in a checkout)."""
    parts = path.replace("\\", "/").split("/")
    if "conformance" in parts:
        path = "/".join(parts[len(parts) - 1 - parts[::-1].index("conformance"):])
    return path, line


def check(id: str, *, estimator: str | None = None, kind: str, section: str, equation: str,
          hint: str, source: str = "", tol: Tolerance = DEFAULT_TOL, mutants: tuple[str, ...] = (),
          thorough: bool = False, derivation: str = "", consequence: str = "",
          defined_at: tuple[str, int] | None = None, cls: str | None = "", slow: bool = False,
          timeout: float = 0.0):
    """Register the decorated function as a check (one entry of the registry). ``defined_at``
    (file, line) overrides where the check is said to be defined (a helper that registers a
    check passes its caller's line). ``cls`` is the class of its failures (``CLASSES``;
    default: ``default_class``; None: no class)."""
    def register(body):
        if id in REGISTRY:
            raise ValueError(f"duplicate check id {id}")
        file, line = _where(body) if defined_at is None else _relative(*defined_at)
        REGISTRY[id] = Check(id=id, estimator=estimator or id.split("/")[0], kind=kind,
                             section=section, source=source, equation=equation, hint=hint,
                             body=body, tol=tol, mutants=tuple(mutants), thorough=thorough,
                             derivation=derivation, consequence=consequence, file=file, line=line,
                             cls=cls, slow=slow, timeout=timeout)
        return body
    return register


def select(pattern: str | None = None, thorough: bool = False, slow: bool = False) -> list[Check]:
    """Registered checks in a stable order; ``pattern`` is a glob over ids; the Hypothesis tier
    with ``thorough``, the training runs with ``slow``. Only what has been registered so far:
    ``conformance.checks.all_checks`` imports every check module first."""
    out = [c for c in REGISTRY.values() if (thorough or not c.thorough) and (slow or not c.slow)]
    if pattern:
        out = [c for c in out if fnmatch.fnmatchcase(c.id, pattern)]
    return sorted(out, key=lambda c: c.id)
