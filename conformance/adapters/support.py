"""What the bundled adapters share, framework-free: capabilities, layouts, config defaults,
citations, templated deviation sentences and the identification of KL estimators.

An adapter translates calling conventions (docs/contract.md, "What an adapter may and may not
do"); the translations that recur across frameworks live here once:

- capabilities: ``honour`` (the backstop an adapter keeps for a direct caller: ``Unsupported``
  for an option its own ``capabilities`` do not list) and ``declarations`` / ``when`` (known
  deviations that depend on what a variant honours, e.g. on its aggregation mode, built from the
  variant's ``capabilities`` instead of lists of check ids);
- layouts: ``contiguous_groups`` / ``restore`` (a trainer that hands over every prompt's samples
  contiguously, in groups of one size), ``per_pair`` (a preference loss the framework returns as
  a batch mean), ``per_token`` ((B,) advantages broadcast over tokens);
- config: ``field_default`` (a dataclass field's default) and ``param_default`` (a signature's);
- citations: ``cite`` / ``citer`` ("path:line, framework version", the version from ``pins``);
- sentences: ``masks_by_multiplication``, ``no_validation``, ``no_grad``, ``clamps``,
  ``type_promotion``;
- KL: ``kl_kind`` / ``kl_kind_of`` (which of the contract's k1, k2, k3 a framework's KL
  computes, compared with ``refimpl.kl_estimate``).

It imports ``conformance`` (``Unsupported``), ``conformance.contract``, ``pins``, ``refimpl``
and torch; never a framework, never the harness.
"""

from __future__ import annotations

import dataclasses
import inspect
from types import SimpleNamespace
from typing import Callable, Mapping

import torch

import refimpl
from conformance import Unsupported, contract
from conformance.adapters.pins import DISTRIBUTIONS, PINS
from conformance.contract import AGG_MODES, KL_KINDS, capability

#: the contract's aggregation modes that take each row's mean or sum first
SEQ_MEAN_MODES = tuple(m for m in AGG_MODES if m.startswith("seq-mean-"))


# --- capabilities ---------------------------------------------------------------------------------

def honoured(adapter, name: str, function: str | None = None):
    """What ``adapter`` (an object with ``capabilities``, or the dict itself) honours for
    capability ``name`` in ``function`` (a ``"<function>.<capability>"`` key wins)."""
    if isinstance(adapter, Mapping):
        adapter = SimpleNamespace(capabilities=dict(adapter))
    return capability(adapter, name, function)


def honour(adapter, name: str, value, function: str | None = None, default=None, why: str = ""):
    """The capability backstop of a direct call: ``value`` if ``adapter``'s own capabilities
    honour it, else ``Unsupported``. For a list-valued capability (``agg``, ``scale``,
    ``kl_kind``) a value outside the contract's vocabulary passes through unchanged (rejecting
    it is the framework's job); for a boolean one, ``default`` (the value that needs no
    capability: None unless given) always passes. ``why`` (a sentence with its citation) is
    appended to the message."""
    if isinstance(adapter, Mapping):
        adapter = SimpleNamespace(capabilities=dict(adapter))
    if contract.honours(adapter, name, value, function, default):
        return value
    shown = honoured(adapter, name, function)
    shown = list(shown) if isinstance(shown, tuple) else shown
    who = getattr(adapter, "name", "this variant")
    where = f"{function}'s " if function else ""
    raise Unsupported(f"{who} does not honour {where}{name}={value!r} (its capabilities: "
                      f"{name} = {shown})" + (f": {why}" if why else ""))


def translate(adapter, name: str, value, table: Mapping, function: str | None = None,
              why: str = "", unknown: str = "unsupported"):
    """A contract option value -> the framework's setting for it (``table``), after the
    ``honour`` backstop. A value without an entry in ``table`` (an unknown mode, in a validation
    check) has no counterpart in the framework: ``Unsupported(why)``, or, with
    ``unknown="pass"``, the value itself, handed to the framework to judge."""
    honour(adapter, name, value, function, why=why)
    if value in table:
        return table[value]
    if unknown == "pass":
        return value
    raise Unsupported(f"{name}={value!r} has no counterpart in the framework, whose setting takes "
                      f"{', '.join(map(repr, table))}" + (f": {why}" if why else ""))


@dataclasses.dataclass(frozen=True)
class When:
    """Known deviations that hold for the variants honouring any of ``values`` (or, for a
    boolean capability, ``values is True`` and the variant honours it)."""
    capability: str                         # "agg", or narrowed: "value_loss.agg"
    values: tuple
    deviations: Mapping[str, str]

    def holds(self, capabilities: Mapping) -> bool:
        function, _, name = self.capability.rpartition(".")
        honours = honoured(capabilities, name, function or None)
        if isinstance(honours, bool):
            return honours in self.values
        return any(v in honours for v in self.values)


def when(capability_key: str, values, deviations: Mapping[str, str]) -> When:
    """``deviations`` apply to a variant whose ``capabilities[capability_key]`` (narrowed per
    function or not) contains any of ``values`` (a value or a list of values)."""
    values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
    return When(capability_key, values, dict(deviations))


def declarations(capabilities: Mapping, *parts: Mapping[str, str] | When) -> dict[str, str]:
    """A variant's ``known_deviations``: the plain dicts in ``parts`` and each ``when(...)``
    whose condition holds for ``capabilities``, merged in order (two sentences for one key are
    joined with "; ")."""
    out: dict[str, str] = {}
    for part in parts:
        if isinstance(part, When):
            if not part.holds(capabilities):
                continue
            part = part.deviations
        for key, sentence in part.items():
            out[key] = sentence if out.get(key) in (None, sentence) else f"{out[key]}; {sentence}"
    return out


# --- layouts --------------------------------------------------------------------------------------

def contiguous_groups(group_ids: torch.Tensor, why: str, *per_sample: torch.Tensor):
    """The order that sorts samples stably into contiguous groups, and the group size ``G``, for
    a trainer that hands each prompt's samples over together and reshapes to ``(-1, G)``.
    Groups of unequal size cannot come out of such a trainer: ``Unsupported(why)``; nor can
    ``per_sample`` inputs (scores) that are not one value per group id."""
    if group_ids.dim() != 1 or any(x.dim() != 1 or x.shape != group_ids.shape for x in per_sample):
        raise Unsupported("the trainer hands over one value and one group id per sample; these "
                          "shapes have no such layout")
    _, counts = torch.unique(group_ids, return_counts=True)
    if bool((counts != counts[0]).any()):
        raise Unsupported(f"groups of sizes {sorted(set(counts.tolist()))}: {why}")
    return torch.argsort(group_ids, stable=True), int(counts[0])


def restore(out: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Put per-sample results computed in ``order`` (``contiguous_groups``) back in the caller's
    order."""
    result = torch.empty_like(out)
    result[order] = out
    return result


def slots(order: torch.Tensor) -> list[int]:
    """Each sample's position in the contiguous layout ``order`` (its inverse permutation)."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return inverse.tolist()


def per_pair(call_one: Callable[[int], torch.Tensor], n: int,
             whole: Callable[[], object] | None = None) -> torch.Tensor:
    """The per-pair losses of a framework loss that returns the batch mean: one call per pair.
    ``whole``, if given, is called once first on the whole batch, as the trainer calls it, so
    that whatever the framework rejects it rejects here."""
    if whole is not None:
        whole()
    return torch.stack([call_one(i) for i in range(n)])


def per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) advantages broadcast over the tokens of ``like`` (B, T); (B, T) ones unchanged."""
    return advantages.unsqueeze(-1).expand_as(like) if advantages.dim() == 1 else advantages


# --- config defaults ------------------------------------------------------------------------------

def field_default(cls, name: str):
    """The default of dataclass field ``name`` of ``cls`` (its factory called)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise KeyError(f"{cls.__name__}.{name} has no default")


def param_default(fn, name: str):
    """The default of parameter ``name`` of ``fn`` (a class: its ``__init__``)."""
    fn = fn.__init__ if inspect.isclass(fn) else fn
    return inspect.signature(fn).parameters[name].default


# --- citations ------------------------------------------------------------------------------------

def cite(path: str, line=None, framework: str | None = None, version: str | None = None) -> str:
    """``"path:line, framework version"``; ``framework`` is a key of ``pins.PINS`` (its version
    is the pin unless given) or a distribution name with ``version``; ``line`` may be a range
    or several (``"3153-3173"``, ``"1637, :2765"``) or already part of ``path``."""
    where = path if line is None else f"{path}:{line}"
    if framework is None:
        return where
    name = DISTRIBUTIONS.get(framework, framework)
    return f"{where}, {name} {version or PINS[framework]}"


def citer(framework: str) -> Callable[..., str]:
    """``cite`` bound to one framework at its pin: ``at = citer("trl"); at(GT, 3116)``."""
    def at(path: str, line=None) -> str:
        return cite(path, line, framework)
    return at


# --- templated deviation sentences ----------------------------------------------------------------

def masks_by_multiplication(where: str, what: str = "the per-token loss", code: str = "",
                            reaches: str = "the result") -> str:
    code = f", {code}," if code else ""
    return (f"multiplies {what} by the mask{code} instead of selecting with it, so NaN or inf at "
            f"a padded position reaches {reaches} (NaN * 0 = NaN, inf * 0 = NaN) ({where})")


def qualify(sentence: str, estimator: str, *checks: str) -> dict[str, str]:
    """A ``qualified`` declaration (docs/contract.md, "Declarations"): ``sentence`` for each of
    ``estimator``'s ``checks`` (ids or globs after the slash), the passes that cannot show what
    the adapter's shaping of the input hides."""
    return {f"{estimator}/{c}": sentence for c in checks}


#: the value and gradient checks of each preference loss (its dtype, mutation and input checks
#: are not about values, so a shaped input hides nothing from them)
PREFERENCE_VALUE_CHECKS = {
    "dpo_loss": ("*matches-reference", "gradient-weight-beta-sigmoid", "large-gap-float32",
                 "exact-minimiser-with-label-smoothing", "log2-at-zero-margin"),
    "ipo_loss": ("*matches-reference", "large-gap-float32", "exact-minimiser"),
    "bradley_terry_loss": ("*matches-reference", "gradient-is-sigmoid-minus-one",
                           "large-gap-float32", "exact-preference-probability-recovered"),
}


def no_validation(what: str, where: str, consequence: str = "") -> str:
    return f"does not validate {what}" + (f"; {consequence}" if consequence else "") + f" ({where})"


def no_grad(what: str, where: str) -> str:
    return f"computes under torch.no_grad, so no gradient reaches {what} ({where})"


def clamps(what: str, bounds: str, where: str, example: str = "") -> str:
    return f"clamps {what} to {bounds}" + (f": {example}" if example else "") + f" ({where})"


def type_promotion(where: str) -> str:
    return f"mixes float dtypes by silent type promotion, with no dtype check ({where})"


# --- KL estimators --------------------------------------------------------------------------------

_PROBE = torch.tensor([-1.5, -0.3, 0.4, 2.0], dtype=torch.float64)     # log-ratios logp - ref


def kl_kind(values, log_ratio, tol: float = 1e-6) -> str | None:
    """Which of the contract's estimators (``refimpl.kl_estimate``, kind k1, k2 or k3) gives
    ``values`` at ``log_ratio`` (= logp - ref_logp); None if none does."""
    lr = torch.as_tensor(log_ratio, dtype=torch.float64)
    got = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    for kind in KL_KINDS:
        want = refimpl.kl_estimate(lr, torch.zeros_like(lr), None, kind)
        if got.shape == want.shape and torch.allclose(got, want, rtol=tol, atol=tol):
            return kind
    return None


def kl_kind_of(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> str | None:
    """Which contract estimator ``fn(logp, ref_logp) -> per-token KL`` computes, found by
    evaluating it at a few log-ratios (float64, shape (1, 4))."""
    logp = _PROBE.unsqueeze(0)
    return kl_kind(fn(logp, torch.zeros_like(logp)), logp)


__all__ = ["SEQ_MEAN_MODES", "When", "cite", "citer", "clamps", "contiguous_groups",
           "declarations", "field_default", "honour", "honoured", "kl_kind", "kl_kind_of",
           "masks_by_multiplication", "no_grad", "no_validation", "param_default", "per_pair",
           "per_token", "restore", "slots", "translate", "type_promotion", "when"]
