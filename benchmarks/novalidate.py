"""refimpl with its argument validation switched off, for the ``refimpl-novalidate`` timings.

Every reference function validates its arguments through the helpers of ``refimpl/_checks.py``
(``_checks.float_tensor(...)``, ``_checks.bool_mask(...)``, ...). ``novalidate()`` replaces each
helper, for the duration of a ``with`` block, by a pass-through that does only the conversion the
helper's callers rely on (a mask comes back as ``bool``, a number as ``float``, per-row
advantages broadcast to ``(B, T)``) and checks nothing. What the timings then show is what the
validation costs. Checks written inline in a function (not through a helper) stay on.

A helper this module does not know, or a known one whose parameters changed, is an error
(``UnknownHelper``) rather than being left validating silently: the table below must follow
``_checks``.
"""

from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

from refimpl import _checks

__all__ = ["PASS_THROUGHS", "UnknownHelper", "helpers", "novalidate"]


class UnknownHelper(RuntimeError):
    """``refimpl._checks`` has a helper without a pass-through here (or its signature changed)."""


def _float_tensor(name, x, ndim=None):
    return x


def _same_float_dtype(**tensors):
    return next(v.dtype for v in tensors.values() if v is not None)


def _bool_mask(mask, shape, name="mask"):
    return mask if mask.dtype == torch.bool else mask != 0


def _unit_interval(name, value):
    return float(value)


def _positive(name, value, *, allow_zero=False):
    return float(value)


def _one_of(name, value, choices):
    return value


def _per_row(name, x, shape):
    return x if x.shape == shape else x.unsqueeze(1).expand(shape)


#: helper name -> its pass-through (same parameters as the helper: compared before patching)
PASS_THROUGHS: dict[str, Callable[..., Any]] = {
    "float_tensor": _float_tensor,
    "same_float_dtype": _same_float_dtype,
    "bool_mask": _bool_mask,
    "unit_interval": _unit_interval,
    "positive": _positive,
    "one_of": _one_of,
    "per_row": _per_row,
}


def helpers() -> dict[str, Callable[..., Any]]:
    """The public functions of ``refimpl._checks`` (its ``__all__`` and any other public function
    defined there), by name."""
    names = set(getattr(_checks, "__all__", ()))
    names |= {n for n, v in vars(_checks).items() if not n.startswith("_") and inspect.isfunction(v)
              and v.__module__ == _checks.__name__}
    return {n: getattr(_checks, n) for n in sorted(names)}


def _parameters(fn: Callable) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _replacements() -> dict[str, Callable[..., Any]]:
    """helper name -> pass-through, after checking that every helper has one of the same shape."""
    found = helpers()
    unknown = sorted(set(found) - set(PASS_THROUGHS))
    if unknown:
        raise UnknownHelper(f"refimpl._checks has helper(s) {', '.join(unknown)} without a "
                            "pass-through in benchmarks/novalidate.py (PASS_THROUGHS)")
    changed = [n for n, fn in found.items() if _parameters(fn) != _parameters(PASS_THROUGHS[n])]
    if changed:
        raise UnknownHelper(f"refimpl._checks helper(s) {', '.join(changed)} changed parameters; "
                            "update their pass-throughs in benchmarks/novalidate.py")
    return {n: PASS_THROUGHS[n] for n in found}


@contextmanager
def novalidate() -> Iterator[list[str]]:
    """Within the block, refimpl validates nothing through ``_checks``; yields the patched names
    (``module.name``). Module attributes are patched: ``refimpl._checks`` itself and any
    ``refimpl`` module that imported a helper by name. Everything is restored on exit."""
    replacements = _replacements()
    originals = {n: getattr(_checks, n) for n in replacements}
    patched: list[tuple[object, str, object]] = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "refimpl" or module_name.startswith("refimpl.")):
            continue
        for attr, value in list(vars(module).items()):
            for name, original in originals.items():
                if value is original:
                    patched.append((module, attr, value))
                    setattr(module, attr, replacements[name])
    try:
        yield sorted(f"{m.__name__}.{a}" for m, a, _ in patched)
    finally:
        for module, attr, value in reversed(patched):
            setattr(module, attr, value)
