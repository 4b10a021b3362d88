"""Checks as data: the ``Check`` record, the registry, and the context a check runs in.

A check is one registered function with a stable id (``ppo_clip_loss/gradient-zero-when-clipped``),
the canonical estimator it exercises, a kind, the clause it enforces, a tolerance with its
reason, a hint for the implementer and the mutants it must reject (``tests/mutants.py``). The
same registry drives refimpl's tests, ``rlconform certify`` and the pytest plugin.

A check body calls only its own estimator on the adapter, through ``ctx.call``, which detects
input mutation and malformed outputs; it compares through ``ctx.compare``, which tells a wrong
value (``fail``) from misbehaviour outside the check's subject (``error``), and a float32-level
difference on float64 input from a real one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from conformance import Unsupported

KINDS = ("reference", "property", "gradient", "input", "exact", "training")
STATUSES = ("pass", "fail", "error", "skip", "xfail")


class CheckFailed(Exception):
    """The property the check is about is violated (status ``fail``)."""

    def __init__(self, message: str, *, sample: str | None = None, expected: Any = None,
                 actual: Any = None, abs_err: float | None = None, rel_err: float | None = None):
        super().__init__(message)
        self.message, self.sample = message, sample
        self.expected, self.actual, self.abs_err, self.rel_err = expected, actual, abs_err, rel_err


class AdapterMisbehaved(Exception):
    """The call misbehaved outside what the check is about (status ``error``)."""


class NotProvided(Exception):
    """The adapter lacks the estimator (status ``skip``, "not provided")."""


@dataclass(frozen=True)
class Tolerance:
    float64: float
    float32: float
    reason: str

    def of(self, dtype: torch.dtype) -> float:
        return self.float64 if dtype == torch.float64 else self.float32


DEFAULT_TOL = Tolerance(1e-10, 2e-5, "float64: a few ulps of sums over at most a few hundred "
                        "terms; float32: the same at single precision (eps 6e-8) with margin")
FLOAT32_ACCURATE = 2e-5        # relative error below which a float64 miss is float32 rounding


@dataclass(frozen=True)
class Check:
    id: str
    estimator: str
    kind: str
    clause: str
    equation: str
    hint: str
    body: Callable[["Context"], None]
    tol: Tolerance = DEFAULT_TOL
    mutants: tuple[str, ...] = ()
    thorough: bool = False                  # the Hypothesis tier (--thorough)
    derivation: str = ""                    # for exact checks: `rlconform explain`
    consequence: str = ""                   # what a failure means for a user of the trainer

    def __post_init__(self):
        if not self.consequence:
            object.__setattr__(self, "consequence", default_consequence(self))
        if self.kind not in KINDS:
            raise ValueError(f"check {self.id}: unknown kind {self.kind!r}")
        if not self.id.startswith(self.estimator + "/") and self.kind != "training":
            raise ValueError(f"check {self.id}: id must start with its estimator {self.estimator!r}")


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


REGISTRY: dict[str, Check] = {}


def check(id: str, *, estimator: str | None = None, kind: str, clause: str, equation: str,
          hint: str, tol: Tolerance = DEFAULT_TOL, mutants: tuple[str, ...] = (),
          thorough: bool = False, derivation: str = "", consequence: str = ""):
    """Register the decorated function as a check (one entry of the registry)."""
    def register(body):
        if id in REGISTRY:
            raise ValueError(f"duplicate check id {id}")
        REGISTRY[id] = Check(id=id, estimator=estimator or id.split("/")[0], kind=kind,
                             clause=clause, equation=equation, hint=hint, body=body, tol=tol,
                             mutants=tuple(mutants), thorough=thorough, derivation=derivation,
                             consequence=consequence)
        return body
    return register


def all_checks(pattern: str | None = None, thorough: bool = False) -> list[Check]:
    """Registered checks in a stable order; ``pattern`` is a glob over ids."""
    from conformance import checks  # noqa: F401  (registers every check)
    out = [c for c in REGISTRY.values() if thorough or not c.thorough]
    if pattern:
        out = [c for c in out if fnmatch.fnmatchcase(c.id, pattern)]
    return sorted(out, key=lambda c: c.id)


# --- the context ----------------------------------------------------------------------------------

def describe(x: Any) -> str:
    """Summarise a value for a message: tensors as ``Tensor[4, 7] float32``, never dumped."""
    if isinstance(x, torch.Tensor):
        if x.dim() == 0:
            return f"{float(x):.6g}" if x.is_floating_point() else str(int(x))
        return f"Tensor[{', '.join(map(str, x.shape))}] {str(x.dtype).replace('torch.', '')}"
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__}({', '.join(describe(v) for v in x)})"
    return repr(x) if not isinstance(x, float) else f"{x:.6g}"


def _clone(x):
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return (a.shape == b.shape and a.dtype == b.dtype
                and bool(((a == b) | (a.isnan() & b.isnan())).all()) if a.is_floating_point()
                else torch.equal(a, b))
    return True


@dataclass
class Context:
    """What a check body sees: the adapter's estimator, a seeded generator, comparison helpers."""
    check: Check
    adapter: Any
    seed: int = 0
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    sample: str | None = None
    dtypes_seen: set = field(default_factory=set)
    max_rel_err: float = 0.0
    ran: int = 0                                    # variants that ran to completion
    calls: int = 0                                  # adapter calls made
    unsupported: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.gen = torch.Generator().manual_seed(self.seed)

    # inputs
    def randn(self, *shape, dtype=torch.float64, scale=1.0, shift=0.0) -> torch.Tensor:
        x = shift + scale * torch.randn(*shape, generator=self.gen, dtype=torch.float64)
        return x.to(dtype)

    def uniform(self, lo, hi, *shape, dtype=torch.float64) -> torch.Tensor:
        u = torch.rand(*shape, generator=self.gen, dtype=torch.float64)
        return (lo + (hi - lo) * u).to(dtype)

    @contextlib.contextmanager
    def variant(self):
        """One variant (sample, options) of a check: ``Unsupported`` raised inside skips this
        variant only; the check is ``skip`` only if no variant ran."""
        calls = self.calls
        try:
            yield
            if self.calls > calls:                    # a variant that called nothing did not run
                self.ran += 1
        except Unsupported as exc:
            self.unsupported.append(f"{self.sample}: {exc}")

    def on(self, sample: str) -> "Context":
        """Name the sample the following calls and comparisons are about."""
        self.sample = sample
        return self

    # the adapter
    @property
    def fn(self) -> Callable:
        fn = getattr(self.adapter, self.check.estimator, None)
        if fn is None or not callable(fn):
            raise NotProvided(f"{self.check.estimator} not provided")
        return fn

    def call(self, *args, check_mutation: bool = True, **kwargs):
        """Call the adapter's estimator; an input it modifies is ``error`` (``fail`` for checks
        about mutation, which pass ``check_mutation=False`` and test it themselves)."""
        fn = self.fn
        self.calls += 1
        for v in list(args) + list(kwargs.values()):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                self.dtypes_seen.add(str(v.dtype).replace("torch.", ""))
        if self.device != "cpu":                    # --device cuda: inputs go to the device
            args = tuple(a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                      for k, v in kwargs.items()}
        before = [_clone(a) for a in args], {k: _clone(v) for k, v in kwargs.items()}
        try:
            out = fn(*args, **kwargs)
        except Unsupported:
            raise
        except (CheckFailed, AdapterMisbehaved, NotProvided):
            raise
        except Exception as exc:                                      # noqa: BLE001
            raise AdapterMisbehaved(f"{self.check.estimator} raised {type(exc).__name__}: {exc}"
                                    f" [sample {self.sample}]") from exc
        if check_mutation:
            changed = [f"argument {i}" for i, (a, b) in enumerate(zip(args, before[0])) if not _same(a, b)]
            changed += [k for k, v in kwargs.items() if not _same(v, before[1][k])]
            if changed:
                raise AdapterMisbehaved(f"{self.check.estimator} modified its input(s) in place: "
                                        f"{', '.join(changed)} [sample {self.sample}]")
        return out

    def expect_tensor(self, out, shape, dtype, what="output") -> torch.Tensor:
        """The output must be a tensor of ``shape`` and ``dtype``; otherwise ``error``."""
        if not isinstance(out, torch.Tensor):
            raise AdapterMisbehaved(f"{what} is {type(out).__name__}, but should be a "
                                    f"torch.Tensor [sample {self.sample}]")
        if tuple(out.shape) != tuple(shape):
            raise AdapterMisbehaved(f"{what} has shape {tuple(out.shape)}, but should be "
                                    f"{tuple(shape)} [sample {self.sample}]")
        if dtype is not None and out.dtype != dtype:
            raise AdapterMisbehaved(f"{what} has dtype {out.dtype}, but should be {dtype} "
                                    f"(the input's) [sample {self.sample}]")
        return out

    def expect_pair(self, out, shape, dtype, what="output"):
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise AdapterMisbehaved(f"{what} should be a pair of tensors, got {describe(out)} "
                                    f"[sample {self.sample}]")
        return tuple(self.expect_tensor(o, shape, dtype, f"{what}[{i}]") for i, o in enumerate(out))

    def compare(self, actual: torch.Tensor, expected: torch.Tensor, what: str,
                tol: float | None = None, nan_is_failure: bool = False, explain: str = "",
                dtype: torch.dtype | None = None):
        """``actual`` must equal ``expected`` within the check's tolerance (absolute, scaled by
        max(1, |expected|)). NaN/inf where the reference is finite is ``error`` unless
        ``nan_is_failure`` (padding checks: NaN reaching the output is the failure)."""
        a = actual.detach().to(torch.float64).cpu()
        e = torch.as_tensor(expected).detach().to(torch.float64).cpu()
        dtype = dtype or actual.dtype                 # the adapter's precision sets the tolerance
        tol = self.check.tol.of(dtype) if tol is None else tol
        if a.shape != e.shape:
            raise AdapterMisbehaved(f"{what}: shape {tuple(a.shape)}, but should be "
                                    f"{tuple(e.shape)} [sample {self.sample}]")
        bad_nan = ~torch.isfinite(a) & torch.isfinite(e)
        if bool(bad_nan.any()):
            idx = tuple(int(i) for i in bad_nan.nonzero()[0])
            msg = (f"{what}{list(idx)} = {float(a[idx])}, but should be {float(e[idx]):.6g} "
                   f"(non-finite where the reference is finite)")
            if nan_is_failure:
                raise CheckFailed(msg, sample=self.sample, expected=float(e[idx]),
                                  actual=str(float(a[idx])))
            raise AdapterMisbehaved(msg + f" [sample {self.sample}]")
        scale = e.abs().clamp(min=1.0)
        err = ((a - e).abs() / scale).nan_to_num(0.0)
        worst = float(err.max()) if err.numel() else 0.0
        self.max_rel_err = max(self.max_rel_err, worst)
        if worst <= tol:
            return
        if dtype == torch.float64 and worst <= FLOAT32_ACCURATE:
            note = f"float32-accurate (max rel err {worst:.1e})"
            if note not in self.notes:
                self.notes.append(note)
            return
        idx = tuple(int(i) for i in (err == err.max()).nonzero()[0])
        loc = f"[{', '.join(map(str, idx))}]" if idx else ""
        raise CheckFailed(
            f"{what}{loc} = {float(a[idx]):.6g}, but should be {float(e[idx]):.6g}"
            + (f" ({explain})" if explain else ""),
            sample=self.sample, expected=float(e[idx]), actual=float(a[idx]),
            abs_err=float((a - e).abs()[idx]), rel_err=worst)

    def require(self, condition: bool, message: str, **fields):
        if not condition:
            raise CheckFailed(message, sample=self.sample, **fields)

    def note(self, text: str):
        self.notes.append(text)


def finite(x: float) -> bool:
    return math.isfinite(x)
