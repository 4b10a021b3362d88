"""What a check body sees: the ``Context`` (the adapter's estimator, seeded inputs, comparison
helpers, the options the adapter's variant honours) and the three outcomes a body can raise.

A check body calls only its own estimator on the adapter, through ``ctx.call``, which detects
input mutation and malformed outputs and fits the call to the adapter's ``capabilities``: an
option the check is *about* that the variant does not honour skips that variant of the check
(``Unsupported``); an option the check is not about is replaced by one the variant honours
(a validation check that happens to aggregate as token-mean runs on a seq-mean variant in that
variant's mode). ``ctx.compare`` tells a wrong value (``fail``) from misbehaviour outside the
check's subject (``error``), and a float32-level difference on float64 input from a real one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from conformance import Unsupported
from conformance.contract import AGG_MODES, KL_KINDS, SCALES, capability, honours
from conformance.registry import Check

#: argument name -> capability it is governed by (conformance.contract.CAPABILITIES)
OPTION_CAPABILITY = {"agg": "agg", "mode": "agg", "scale": "scale", "kind": "kl_kind",
                     "clip_high": "clip_high", "dual_clip": "dual_clip", "clip": "value_clip",
                     "norm_len": "norm_len", "margin": "margin",
                     "label_smoothing": "label_smoothing", "eps": "eps"}
VOCABULARY = {"agg": AGG_MODES, "scale": SCALES, "kl_kind": KL_KINDS}


class CheckFailed(Exception):
    """The property the check is about is violated (status ``fail``). ``cls``, where given, is
    the failure's class (``conformance.registry.CLASSES``) and wins over the check's."""

    def __init__(self, message: str, *, sample: str | None = None, expected: Any = None,
                 actual: Any = None, abs_err: float | None = None, rel_err: float | None = None,
                 cls: str | None = None):
        super().__init__(message)
        self.message, self.sample, self.cls = message, sample, cls
        self.expected, self.actual, self.abs_err, self.rel_err = expected, actual, abs_err, rel_err


class AdapterMisbehaved(Exception):
    """The call misbehaved outside what the check is about (status ``error``)."""


class NotProvided(Exception):
    """The adapter lacks the estimator (status ``skip``, "not provided")."""


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


def float32_representable(x: torch.Tensor) -> bool:
    """Whether every finite entry of ``x`` is exactly a float32 number: the trace float32
    arithmetic leaves on a result cast back to float64 (float64 arithmetic leaves it on almost
    no entry but 0 and small integers)."""
    x = x.detach().to(torch.float64).cpu()
    finite = x[torch.isfinite(x)]
    return bool((finite.to(torch.float32).to(torch.float64) == finite).all())


def relative_errors(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """|actual - expected| / max(1, |expected|), float64: 0 where the two are equal (the same
    infinity included) or both NaN, inf where only one is NaN or the infinities differ."""
    a = actual.detach().to(torch.float64).cpu()
    e = torch.as_tensor(expected).detach().to(torch.float64).cpu()
    err = (a - e).abs() / e.abs().clamp(min=1.0)
    same = (a == e) | (a.isnan() & e.isnan())
    return torch.where(same, torch.zeros_like(err), err.nan_to_num(nan=math.inf))


def digits_apart(actual, expected) -> int:
    """Significant digits enough to print two numbers so that they read apart (6, 10 or 17)."""
    if not (isinstance(actual, float) and isinstance(expected, float)):
        return 6
    return next((d for d in (6, 10) if f"{actual:.{d}g}" != f"{expected:.{d}g}"), 17)


def _digits(actual: float, expected: float) -> str:
    """"a, but should be e" with as many digits as it takes to tell them apart."""
    d = digits_apart(actual, expected)
    return f"{actual:.{d}g}, but should be {expected:.{d}g}"


@dataclass(frozen=True)
class RecordedCall:
    """One call of the adapter's estimator, as made (after ``resolve``; inputs copied before)."""
    sample: str | None
    args: tuple
    kwargs: dict


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
    recorded: list[RecordedCall] = field(default_factory=list)   # every ctx.call, in order

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

    # the adapter's capabilities
    def resolve(self, args, kwargs, about=()) -> tuple[list, dict]:
        """Fit one call to the options the adapter's variant honours (its ``capabilities``).

        ``about`` names the arguments the check (or this variant of it) is about: an option
        among them that the variant does not honour raises ``Unsupported`` (this variant is
        ``skip``); any other option the variant does not honour is replaced by one it honours
        (the first it lists, or the contract's default). Values outside the contract's
        vocabulary (an unknown mode, in a validation check) pass through unchanged. Groups of
        unequal size, for a variant without ``unequal_groups``, are ``Unsupported`` unless the
        check is about ``group_ids``. Idempotent; the identity for an adapter that declares no
        capabilities."""
        args, kwargs = list(args), dict(kwargs)
        sig = _signature(self.check.estimator)
        if sig is None or not getattr(self.adapter, "capabilities", None):
            return args, kwargs
        names = list(sig.parameters)
        name = getattr(self.adapter, "name", "the adapter")

        def get(p):
            if p in kwargs:
                return kwargs[p]
            i = names.index(p)
            return args[i] if i < len(args) else sig.parameters[p].default

        def put(p, value):
            i = names.index(p)
            if p not in kwargs and i < len(args):
                args[i] = value
            else:
                kwargs[p] = value

        for p in names:
            cap = OPTION_CAPABILITY.get(p)
            if cap is None:
                continue
            value, estimator = get(p), self.check.estimator
            default = get("clip_low") if p == "clip_high" else sig.parameters[p].default
            if honours(self.adapter, cap, value, estimator, default):
                continue
            allowed = capability(self.adapter, cap, estimator)
            if p in about or (p == "clip_high" and "clip_low" in about):
                raise Unsupported(f"{name} does not honour {p}={value!r} (its capabilities: "
                                  f"{cap} = {list(allowed) if cap in VOCABULARY else allowed})")
            put(p, allowed[0] if cap in VOCABULARY else sig.parameters[p].default)
        if ("group_ids" in names and "group_ids" not in about
                and capability(self.adapter, "unequal_groups", self.check.estimator) is not True):
            ids = get("group_ids")
            if isinstance(ids, torch.Tensor) and len(set(torch.unique(ids, return_counts=True)[1]
                                                         .tolist())) > 1:
                raise Unsupported(f"{name} takes groups of equal size only (its capabilities: "
                                  "unequal_groups = False)")
        return args, kwargs

    def call(self, *args, check_mutation: bool = True, about=(), valid_edge: str = "",
             **kwargs):
        """Call the adapter's estimator with the call fitted to its capabilities (``resolve``);
        an input it modifies is ``error`` (``fail`` for checks about mutation, which pass
        ``check_mutation=False`` and test it themselves). A check about a valid edge value of
        the contract names it in ``valid_edge`` ("gamma = 0"): a call that raises on it is
        ``fail`` (refusing a valid input is what that check is about), not ``error``."""
        fn = self.fn
        args, kwargs = self.resolve(args, kwargs, about)
        self.calls += 1
        for v in list(args) + list(kwargs.values()):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                self.dtypes_seen.add(str(v.dtype).replace("torch.", ""))
        if self.device != "cpu":                    # --device cuda: inputs go to the device
            args = tuple(a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v
                      for k, v in kwargs.items()}
        before = [_clone(a) for a in args], {k: _clone(v) for k, v in kwargs.items()}
        self.recorded.append(RecordedCall(self.sample, tuple(_clone(a) for a in before[0]),
                                          dict(before[1])))
        try:
            out = fn(*args, **kwargs)
        except Unsupported:
            raise
        except (CheckFailed, AdapterMisbehaved, NotProvided):
            raise
        except Exception as exc:                                      # noqa: BLE001
            if valid_edge:
                # what training sees changes as much as it can: a run with that value stops
                raise CheckFailed(f"{self.check.estimator} raised {type(exc).__name__}: {exc} on "
                                  f"the valid {valid_edge} (a run with it stops)",
                                  sample=self.sample, cls="gradient") from exc
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
        """The output must be a tensor of ``shape``; otherwise ``error``. Outputs come back
        uncast (docs/contract.md, "What an adapter may and may not do"): a floating output of
        another float dtype than ``dtype`` (the input's) is compared at its own precision's
        tolerance, with a note; only ``*/dtype-kept`` judges the dtype itself. A non-float
        output where a float is expected is ``error``."""
        if not isinstance(out, torch.Tensor):
            raise AdapterMisbehaved(f"{what} is {type(out).__name__}, but should be a "
                                    f"torch.Tensor [sample {self.sample}]")
        if tuple(out.shape) != tuple(shape):
            raise AdapterMisbehaved(f"{what} has shape {tuple(out.shape)}, but should be "
                                    f"{tuple(shape)} [sample {self.sample}]")
        if dtype is not None and out.dtype != dtype:
            if not (out.is_floating_point() and dtype.is_floating_point):
                raise AdapterMisbehaved(f"{what} has dtype {out.dtype}, but should be {dtype} "
                                        f"(the input's) [sample {self.sample}]")
            note = (f"output {str(out.dtype)[6:]} for {str(dtype)[6:]} input, compared at "
                    f"{str(out.dtype)[6:]} tolerance")
            if note not in self.notes:
                self.notes.append(note)
        return out

    def expect_pair(self, out, shape, dtype, what="output"):
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise AdapterMisbehaved(f"{what} should be a pair of tensors, got {describe(out)} "
                                    f"[sample {self.sample}]")
        return tuple(self.expect_tensor(o, shape, dtype, f"{what}[{i}]") for i, o in enumerate(out))

    def compare(self, actual: torch.Tensor, expected: torch.Tensor, what: str,
                tol: float | None = None, nan_is_failure: bool = False, explain: str = "",
                dtype: torch.dtype | None = None, expected32: torch.Tensor | None = None):
        """``actual`` must equal ``expected`` within the check's tolerance (absolute, scaled by
        max(1, |expected|)) at ``dtype``'s precision (the output's, unless given); an explicit
        ``tol`` is used as given, whatever the dtype. NaN/inf where the reference is finite is
        ``error`` unless ``nan_is_failure`` (padding checks: NaN reaching the output is the
        failure).

        ``expected32`` is the reference computed in float32 on the same inputs (cast to
        float32). A float32 output (of float64 input) is compared with it where given. A
        float64 output that misses the tolerance passes, with the note "float32-accurate (max
        rel err ...)", only if it was computed in float32 (every entry a float32 number) and
        equals ``expected32`` within the float32 tolerance: float32 rounding. Without
        ``expected32`` there is no such escape: an eps of another size or in another place is a
        difference, however small."""
        dtype = dtype or actual.dtype                 # the adapter's precision sets the tolerance
        if dtype != torch.float64 and expected32 is not None:
            expected = expected32
        a = actual.detach().to(torch.float64).cpu()
        e = torch.as_tensor(expected).detach().to(torch.float64).cpu()
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
        err = relative_errors(a, e)
        worst = float(err.max()) if err.numel() else 0.0
        self.max_rel_err = max(self.max_rel_err, worst)
        if worst <= tol:
            return
        if dtype == torch.float64 and self.float32_accurate(a, expected32):
            note = f"float32-accurate (max rel err {worst:.1e})"
            if note not in self.notes:
                self.notes.append(note)
            return
        idx = tuple(int(i) for i in (err == err.max()).nonzero()[0])
        loc = f"[{', '.join(map(str, idx))}]" if idx else ""
        raise CheckFailed(
            f"{what}{loc} = {_digits(float(a[idx]), float(e[idx]))}"
            + (f" ({explain})" if explain else ""),
            sample=self.sample, expected=float(e[idx]), actual=float(a[idx]),
            abs_err=float((a - e).abs()[idx]), rel_err=worst)

    def float32_accurate(self, actual: torch.Tensor, expected32: torch.Tensor | None) -> bool:
        """Whether float64 ``actual`` is refimpl computed in float32 (``expected32``), cast
        back: every entry a float32 number, and equal to ``expected32`` within the check's
        float32 tolerance. False without ``expected32``."""
        if expected32 is None or not float32_representable(actual):
            return False
        e32 = torch.as_tensor(expected32)
        if tuple(e32.shape) != tuple(actual.shape) or not torch.equal(
                torch.isfinite(e32.detach().cpu()), torch.isfinite(actual.detach().cpu())):
            return False
        err = relative_errors(actual, e32)
        return not err.numel() or float(err.max()) <= self.check.tol.float32

    def require(self, condition: bool, message: str, **fields):
        if not condition:
            raise CheckFailed(message, sample=self.sample, **fields)

    def note(self, text: str):
        self.notes.append(text)


@functools.lru_cache(maxsize=None)
def _signature(estimator: str):
    """refimpl's signature of a canonical function (the contract's), or None."""
    import refimpl
    fn = getattr(refimpl, estimator, None)
    return inspect.signature(fn) if callable(fn) else None
