"""The ledger: every number the sheet prints is entered here with the expectation it is checked
against, and printed in a form that does not depend on rounding noise.

A claim is one of three kinds:
- ``bound``: a residual against an independent expectation (the tabular oracle, a closed form
  computed another way) must be below a stated bound; the document prints the bound ("< 1e-12"),
  never the residual, so the text is the same on every machine that computes it right.
- ``value``: a figure printed to stated significant digits, checked against an expectation
  computed independently within a tolerance.
- ``holds``: a statement (an inequality, a flag that fired) that must be true.

A claim that fails is printed as FAILED with its numbers, and ``Ledger.failures`` lists it: the
generator then exits 1 (``rlconform sheet``), so a broken refimpl function cannot produce a
document that looks right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def sig(x: float, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits, without a sign on zero."""
    if x == 0 or not math.isfinite(x):
        return "0" if x == 0 else str(x)
    text = f"{x:.{digits}g}"
    return "0" if float(text) == 0 else text


def fixed(x: float, places: int = 3) -> str:
    text = f"{x:.{places}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


@dataclass
class Claim:
    section: str
    text: str
    ok: bool
    detail: str                  # the numbers (for the command's output; not deterministic)
    test: str = ""               # what was checked, deterministic (for the document)


@dataclass
class Ledger:
    claims: list[Claim] = field(default_factory=list)
    section: str = ""
    notes: dict = field(default_factory=dict)      # results one section hands to a later one

    @property
    def failures(self) -> list[Claim]:
        return [c for c in self.claims if not c.ok]

    def _enter(self, text: str, ok: bool, detail: str, test: str = "") -> bool:
        self.claims.append(Claim(self.section, text, ok, detail, test))
        return ok

    def bound(self, text: str, residual: float, bound: float) -> str:
        """``residual < bound``; prints ``< bound`` (or the failure with the residual)."""
        residual = float(residual)
        ok = math.isfinite(residual) and residual < bound
        self._enter(text, ok, f"residual {residual:.3g}, bound {bound:.0e}",
                    f"residual < {bound:.0e}")
        return f"< {bound:.0e}" if ok else f"**FAILED: {residual:.3g}, not < {bound:.0e}**"

    def value(self, text: str, x: float, expected: float, tol: float, digits: int = 4) -> str:
        """``x`` printed to ``digits`` significant digits, checked ``|x - expected| <= tol``."""
        x, expected = float(x), float(expected)
        ok = math.isfinite(x) and abs(x - expected) <= tol
        self._enter(text, ok, f"{x!r} vs expected {expected!r} (tolerance {tol:.0e})",
                    f"within {tol:.0e} of the expectation")
        return sig(x, digits) if ok else f"**FAILED: {x:.6g}, expected {expected:.6g}**"

    def holds(self, text: str, ok: bool, shown: str, detail: str = "") -> str:
        """A statement that must be true; prints ``shown`` (or the failure)."""
        ok = bool(ok)
        self._enter(text, ok, detail or shown, "holds")
        return shown if ok else f"**FAILED: {text} ({detail or shown})**"
