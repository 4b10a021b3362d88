"""Generic templates: what every canonical function gets from its table entry, and the shared
machinery of the concept modules beside this one.

- ``Sample`` and ``Op`` (PyTorch OpInfo-style): one entry per canonical function says how to
  build sample calls, which arguments are padded and which are differentiated, and which mutants
  each generic check rejects. ``register_op(op)`` registers the generic checks of that function:
  ``<fn>/matches-reference``, ``<fn>/gradient-matches-reference``, ``<fn>/padding-nan``,
  ``<fn>/padding-inf``, ``<fn>/padding-1e30``, ``<fn>/no-input-mutation``, ``<fn>/dtype-kept``
  and the thorough tier's ``<fn>/matches-reference-random-inputs`` (``docs/checks.md`` lists
  every generated id with this file and line).
- ``input_check``: a check that an invalid argument is rejected with a ``ValueError``.
- The tabular helpers of the exact checks (``refimpl.tabular``: every outcome enumerated).
- The mutant registry: ``@mutant`` registers a broken implementation beside the checks that
  reject it; ``<function>~<bug>`` names a generic mutant made for any canonical function;
  ``mutant_adapter(name)`` is refimpl with that one function broken.
"""

from __future__ import annotations

import inspect
import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import refimpl
from conformance import Unsupported
from conformance.context import (
    AdapterMisbehaved,
    CheckFailed,
    Context,
    RecordedCall,
    relative_errors,
)
from conformance.registry import LOSS_ESTIMATORS, Tolerance, check
from refimpl import tabular as tab

F32, F64 = torch.float32, torch.float64

#: the section of docs/contract.md that defines each canonical function
SECTION = {
    "discounted_returns": "returns-and-advantages", "gae": "returns-and-advantages",
    "kl_penalized_rewards": "returns-and-advantages",
    "group_normalized_advantages": "returns-and-advantages",
    "leave_one_out_advantages": "returns-and-advantages",
    "batch_normalized_advantages": "returns-and-advantages", "kl_estimate": "kl",
    "aggregate": "losses-on-tokens", "policy_gradient_loss": "losses-on-tokens",
    "ppo_clip_loss": "losses-on-tokens", "value_loss": "losses-on-tokens",
    "bradley_terry_loss": "preferences", "dpo_loss": "preferences", "ipo_loss": "preferences",
    "token_logprobs": "log-probabilities", "sequence_logprob": "log-probabilities",
}


# --- samples and table entries ------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """A named input configuration: padded rows (``lengths`` in width ``T``), groups, or pairs."""
    name: str
    dtype: torch.dtype
    lengths: tuple[int, ...] = ()
    T: int = 0
    group_sizes: tuple[int, ...] = ()
    options: dict = field(default_factory=dict)

    @property
    def B(self) -> int:
        return len(self.lengths) if self.lengths else sum(self.group_sizes)

    def mask(self, device="cpu") -> torch.Tensor:
        return (torch.arange(self.T).unsqueeze(0) < torch.tensor(self.lengths).unsqueeze(1)).to(device)

    @property
    def label(self) -> str:
        return f"{self.name}/{str(self.dtype).replace('torch.', '')}"


def _both(name, **kw):
    return [Sample(name, F64, **kw), Sample(name, F32, **kw)]


PADDED = (_both("unequal_lengths", lengths=(3, 1, 5, 2), T=6)
          + _both("one_token_rows", lengths=(1, 1, 1), T=3)
          + _both("full_rows", lengths=(4, 4), T=4))
GROUPS = (_both("groups_unsorted_ids", group_sizes=(3, 2, 2), options={"ids": (7, 3, 7, 3, 9, 9, 7)})
          + _both("unequal_group_sizes", group_sizes=(2, 5), options={"ids": (1, 1, 0, 0, 0, 0, 0)})
          + _both("all_rewards_equal", group_sizes=(4, 3), options={"ids": (5, 5, 5, 5, 8, 8, 8),
                                                                      "constant_group": 5})
          # equal sizes, ids interleaved: what a trainer that reshapes to (-1, G) can take
          + _both("equal_groups_interleaved", group_sizes=(3, 3, 3),
                  options={"ids": (4, 9, 2, 9, 4, 2, 2, 4, 9)})
          # group stds near 1e-3 and 1e-4: eps (1e-6) is a visible part of std + eps here, so an
          # eps of another size (1e-8) or in another place (inside a square root) shows in
          # float64 and float32 alike; scores near 0 keep float32 cancellation out of the way
          + _both("small_group_std", group_sizes=(4, 4),
                  options={"ids": (3, 6, 3, 6, 6, 3, 3, 6), "spread": {3: 1e-3, 6: 1e-4}}))
PAIRS = _both("pairs", lengths=(1,) * 6, T=1)


@dataclass(frozen=True)
class Op:
    """A canonical function as the generic checks see it."""
    name: str
    build: Callable                       # (ctx, sample) -> (args tuple, kwargs dict)
    samples: tuple[Sample, ...]
    out: str                              # "BT", "pair", "B", "scalar"
    padded: tuple[int, ...] = ()          # positions in args of (B, T) tensors with padding
    diff: tuple[int, ...] = ()            # positions in args differentiated
    mutants: dict = field(default_factory=dict)   # generic check name -> mutants it rejects
    variants: tuple[dict, ...] = ({},)    # extra keyword options, each a separate call

    def reference(self, *args, **kwargs):
        return getattr(refimpl, self.name)(*args, **kwargs)


def sample_bt(ctx, s, scale=1.0, shift=0.0):
    return ctx.randn(s.B, s.T, dtype=s.dtype, scale=scale, shift=shift)


def group_scores(ctx, s):
    ids = torch.tensor(s.options["ids"], dtype=torch.int64)
    scores = ctx.randn(s.B, dtype=s.dtype)
    if "spread" in s.options:                       # group id -> std of its scores
        spread = torch.tensor([s.options["spread"][int(i)] for i in ids], dtype=torch.float64)
        scores = (scores.to(torch.float64) * spread).to(s.dtype)
    if "constant_group" in s.options:
        scores = torch.where(ids == s.options["constant_group"], torch.full_like(scores, 0.7), scores)
    return scores, ids


def pair_logps(ctx, s, n=6):
    return tuple(ctx.randn(n, dtype=s.dtype, scale=2.0, shift=-10.0) for _ in range(4))


def out_shape(op: Op, sample: Sample):
    return {"BT": (sample.B, sample.T), "pair": (sample.B, sample.T), "B": (sample.B,),
            "scalar": (), "N": (6,)}[op.out]


# --- generic checks --------------------------------------------------------------------------------

def _outputs(ctx: Context, op: Op, sample, out, dtype) -> list[torch.Tensor]:
    shape = out_shape(op, sample)
    if op.out == "pair":
        return list(ctx.expect_pair(out, shape, dtype))
    return [ctx.expect_tensor(out, shape, dtype)]


def _calls(ctx: Context, op: Op, dtypes=(torch.float64, torch.float32)):
    """Yield (sample, kwargs, args, about) for every sample and variant; ``about`` names the
    options the variant is about. Loop bodies run inside ``ctx.variant()`` and fit the call to
    the adapter's capabilities there (``ctx.resolve``), so an option the variant does not honour
    skips that variant only."""
    for sample in op.samples:
        if sample.dtype not in dtypes:
            continue
        for variant in op.variants:
            args, kwargs = op.build(ctx, sample)
            label = sample.label + (" " + ",".join(f"{k}={v}" for k, v in variant.items())
                                    if variant else "")
            ctx.on(label)
            yield sample, {**kwargs, **variant}, list(args), tuple(variant)


def gradient_weights(outs, seed=0):
    """The weights w_k of the gradient checks: the gradient compared is that of
    sum_k <output_k, w_k> (seeded, so ``rlconform repro`` writes the same ones)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]


def float32_inputs(args, kwargs) -> tuple[list, dict]:
    """The call with every float64 tensor cast to float32 (detached: a fresh leaf)."""
    def cast(x):
        return x.detach().to(F32) if isinstance(x, torch.Tensor) and x.dtype == F64 else x
    return [cast(a) for a in args], {k: cast(v) for k, v in kwargs.items()}


def reference32(op: Op, args, kwargs) -> list | None:
    """refimpl computed in float32 on the same inputs (``Context.compare``'s ``expected32``):
    what a float64 output computed in float32 may equal. None where the inputs hold no float64
    tensor, or refimpl rejects the float32 call."""
    if not any(isinstance(a, torch.Tensor) and a.dtype == F64
               for a in list(args) + list(kwargs.values())):
        return None
    args32, kwargs32 = float32_inputs(args, kwargs)
    try:
        with torch.no_grad():
            ref = op.reference(*args32, **kwargs32)
    except Exception:                                                 # noqa: BLE001
        return None
    return list(ref) if isinstance(ref, tuple) else [ref]


def reference_grads32(op: Op, args, kwargs, weights) -> list | None:
    """refimpl's gradients (of ``sum(out * weights)``) computed in float32 on the same inputs,
    the weights rounded to float32 as autograd rounds them into a float32 computation."""
    if any(i >= len(args) for i in op.diff) or not any(args[i].dtype == F64 for i in op.diff):
        return None
    args32, kwargs32 = float32_inputs(args, kwargs)
    for i in op.diff:
        args32[i] = args32[i].requires_grad_(True)
    try:
        ref = op.reference(*args32, **kwargs32)
    except Exception:                                                 # noqa: BLE001
        return None
    refs = list(ref) if isinstance(ref, tuple) else [ref]
    weights32 = [w.to(r.dtype) for w, r in zip(weights, refs)]
    return weighted_grads(refs, [args32[i] for i in op.diff], weights32)


def _nth(xs, i):
    return None if xs is None else xs[i]


def weighted_grads(outs, inputs, weights):
    """d sum_k <outs_k, weights_k> / d inputs (zeros where the outputs do not depend on one)."""
    total = sum((o * w).sum() for o, w in zip(outs, weights))
    if not total.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(total, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gs)]


def _register_generic(op: Op):
    name = op.name
    section = SECTION[name]

    @check(f"{name}/matches-reference", kind="reference", section=section,
           equation=f"values of {name} equal refimpl.{name} (the contract's definition)",
           hint=f"compare your {name} with refimpl.{name} on the failing sample; the message "
                "names the first entry that differs",
           mutants=op.mutants.get("matches-reference", ()) + (f"{name}~scaled",))
    def matches_reference(ctx: Context, op=op):
        for sample, kwargs, args, about in _calls(ctx, op):
            with ctx.variant():
                args, kwargs = ctx.resolve(args, kwargs, about)
                out = ctx.call(*args, **kwargs)
                ref = op.reference(*args, **kwargs)
                refs = list(ref) if isinstance(ref, tuple) else [ref]
                refs32 = reference32(op, args, kwargs)
                for i, (o, r) in enumerate(zip(_outputs(ctx, op, sample, out, sample.dtype), refs)):
                    ctx.compare(o, r, f"{name} output {i}" if len(refs) > 1 else name,
                                expected32=_nth(refs32, i))

    if op.diff:
        @check(f"{name}/gradient-matches-reference", kind="gradient", section=section,
               equation=f"autograd gradients of {name} equal refimpl's",
               hint="the gradient differs from the reference's: look for a detach, a clamp or a "
                    "mask applied in the wrong place",
               mutants=op.mutants.get("gradient-matches-reference", ()) + (f"{name}~detached",))
        def gradient_matches_reference(ctx: Context, op=op):
            for sample, kwargs, args, about in _calls(ctx, op):
                with ctx.variant():
                    args, kwargs = ctx.resolve(args, kwargs, about)
                    for i in op.diff:
                        args[i] = args[i].detach().clone().requires_grad_(True)
                    outs = _outputs(ctx, op, sample, ctx.call(*args, **kwargs), sample.dtype)
                    ref = op.reference(*args, **kwargs)
                    refs = list(ref) if isinstance(ref, tuple) else [ref]
                    w = gradient_weights(refs)
                    inputs = [args[i] for i in op.diff]
                    got = weighted_grads(outs, inputs, w)
                    want = weighted_grads(refs, inputs, w)
                    want32 = reference_grads32(op, args, kwargs, w)
                    for k, (i, g, r) in enumerate(zip(op.diff, got, want)):
                        ctx.compare(g, r, f"d {name} / d argument {i}", expected32=_nth(want32, k))

    for fill_name, fills in (("nan", (float("nan"),)), ("inf", (float("inf"), float("-inf"))),
                             ("1e30", (1e30,))):
        if not op.padded:
            break

        @check(f"{name}/padding-{fill_name}", kind="property",
               section="padding-invariance",
               equation="f(x with padding p) = f(x with padding q); (B,T) outputs and gradients "
                        "are exactly 0 at padded positions",
               hint="replace padded entries by 0 with torch.where before any arithmetic; "
                    "multiplying by the mask keeps NaN and inf (NaN * 0 = NaN)",
               tol=Tolerance(0.0, 0.0, "padding must not change a single bit of the result"),
               mutants=op.mutants.get(f"padding-{fill_name}", ()) + (
                   (f"{name}~reads_padding",) if fill_name == "1e30" else
                   (f"{name}~nan_through_mask", f"{name}~reads_padding")))
        def padding(ctx: Context, op=op, fills=fills):
            for sample, kwargs, args, about in _calls(ctx, op):
                with ctx.variant():
                    args, kwargs = ctx.resolve(args, kwargs, about)
                    if min(sample.lengths) == sample.T:
                        continue                                  # no padding in this sample
                    mask = sample.mask()
                    for fill in fills:
                        dirty = list(args)
                        for i in op.padded:
                            if args[i].shape == mask.shape:     # a (B,) advantage has no padding
                                dirty[i] = torch.where(mask, args[i], torch.full_like(args[i], fill))
                        for i in op.diff:
                            args[i] = args[i].detach().clone().requires_grad_(True)
                            dirty[i] = dirty[i].detach().clone().requires_grad_(True)
                        clean = _outputs(ctx, op, sample, ctx.call(*args, **kwargs), sample.dtype)
                        outs = _outputs(ctx, op, sample, ctx.call(*dirty, **kwargs), sample.dtype)
                        for k, (o, c) in enumerate(zip(outs, clean)):
                            ctx.compare(o, c, f"output {k} with padding = {fill}", nan_is_failure=True,
                                        explain="padding read")
                            if o.shape == mask.shape:
                                ctx.compare(o.detach()[~mask], torch.zeros(int((~mask).sum())),
                                            f"output {k} at padded positions (padding = {fill})",
                                            nan_is_failure=True)
                        if op.diff:
                            w = gradient_weights(clean)
                            g_clean = weighted_grads(clean, [args[i] for i in op.diff], w)
                            g_dirty = weighted_grads(outs, [dirty[i] for i in op.diff], w)
                            for i, gd, gc in zip(op.diff, g_dirty, g_clean):
                                ctx.compare(gd[~mask], torch.zeros(int((~mask).sum())),
                                            f"d/d argument {i} at padded positions (padding = {fill})",
                                            nan_is_failure=True)
                                ctx.compare(gd, gc, f"d/d argument {i} with padding = {fill}",
                                            nan_is_failure=True)

    @check(f"{name}/no-input-mutation", kind="property",
           section="dtypes-devices-and-mutation",
           equation="inputs are bitwise the same after the call",
           hint="work on a copy (x = x.clone()) or use out-of-place operations (sub, not sub_)",
           mutants=op.mutants.get("no-input-mutation", ()) + (f"{name}~in_place",))
    def no_mutation(ctx: Context, op=op):
        for sample, kwargs, args, about in _calls(ctx, op):
            with ctx.variant():
                args, kwargs = ctx.resolve(args, kwargs, about)
                before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
                ctx.call(*args, check_mutation=False, **kwargs)
                for i, (a, b) in enumerate(zip(args, before)):
                    if isinstance(a, torch.Tensor) and not torch.equal(a.nan_to_num(), b.nan_to_num()):
                        raise CheckFailed(f"argument {i} ({tuple(a.shape)}) was modified in place",
                                          sample=ctx.sample)

    @check(f"{name}/dtype-kept", kind="property",
           section="dtypes-devices-and-mutation",
           equation="float32 in -> float32 out; float64 in -> float64 out",
           hint="do not cast (.float(), .double()) the result; compute in the input's dtype",
           mutants=op.mutants.get("dtype-kept", ()) + (f"{name}~float32_out",))
    def dtype_kept(ctx: Context, op=op):
        for sample, kwargs, args, about in _calls(ctx, op):
            with ctx.variant():
                args, kwargs = ctx.resolve(args, kwargs, about)
                out = ctx.call(*args, **kwargs)
                for o in (out if isinstance(out, (tuple, list)) else [out]):
                    if not isinstance(o, torch.Tensor):
                        raise AdapterMisbehaved(f"output is {type(o).__name__}, not a tensor "
                                                f"[sample {ctx.sample}]")
                    if o.dtype != sample.dtype:
                        raise CheckFailed(f"output dtype {o.dtype}, but should be {sample.dtype}",
                                          sample=ctx.sample)


# --- the class of a failure ----------------------------------------------------------------------

def failure_class(ctx: Context, failure: CheckFailed) -> str | None:
    """The class of a failed check's row (``conformance.registry.CLASSES``; docs/contract.md,
    "Certification and statuses"): the failure's own (``CheckFailed(cls=...)``), else the
    check's, except for a check whose derived class is ``gradient`` on a function of the table.
    There every call of the failing sample is re-run on the adapter and on refimpl (values and,
    for differentiable inputs, gradients), split into real and padded entries:

    - real entries agree, padded ones do not: ``padding``;
    - real entries off by no more than float32 rounding of refimpl (in float64 and float32), on
      the failing calls and on every float64 sample without padding: ``precision``;
    - a loss whose gradients agree at the check's tolerance: ``value`` (a value convention);
    - otherwise ``gradient``."""
    chk = ctx.check
    if failure.cls is not None:
        return failure.cls
    if chk.cls != "gradient" or chk.estimator not in OPS:
        return chk.cls
    op = OPS[chk.estimator]
    calls = [c for c in ctx.recorded if c.sample == failure.sample] or ctx.recorded[-1:]
    levels = [lv for lv in (_levels(ctx, op, c) for c in calls) if lv is not None]
    if levels:
        real, padded = max(r for r, _ in levels), any(p for _, p in levels)
        if real <= 1 and padded:
            return "padding"
        probes = (_levels(ctx, op, c) for c in _probe_calls(ctx, op))
        if real == 1 and all(lv[0] <= 1 for lv in probes if lv is not None):
            return "precision"
    if chk.estimator in LOSS_ESTIMATORS and chk.kind in ("reference", "property") and calls:
        # the failing calls and every sample of the function: a gradient that differs only on a
        # sample the check did not reach yet still makes the difference ``gradient``
        same = [_same_gradient(ctx, op, c) for c in calls + _probe_calls(ctx, op, padded=True)]
        if all(s is not False for s in same) and any(s for s in same):
            return "value"
    return "gradient"


def _probe_calls(ctx: Context, op: Op, padded: bool = False) -> list[RecordedCall]:
    """Calls on every float64 sample of the function's table entry (without padding unless
    ``padded``; the small group std among them): a difference that is lower precision everywhere is ``precision``; an
    eps of another size shows beyond float32 level on the samples made for it."""
    out = []
    for sample in op.samples:
        if sample.dtype != F64 or (not padded and sample.lengths and min(sample.lengths) < sample.T):
            continue                        # padded samples: what padding does is another finding
        for variant in op.variants:
            args, kwargs = op.build(ctx, sample)
            try:
                args, kwargs = ctx.resolve(args, {**kwargs, **variant}, tuple(variant))
            except Unsupported:
                continue
            out.append(RecordedCall(sample.label, tuple(args), dict(kwargs)))
    return out


def _level(ctx: Context, got, want, want32) -> int:
    """0: equal at the check's tolerance; 1: off by no more than float32 rounding of refimpl in
    float64 and in float32 (float32-accurate included: in a check that failed, a call computed
    in float32 is a precision finding); 2: beyond."""
    if got.shape != want.shape or not bool((torch.isfinite(got) == torch.isfinite(want)).all()):
        return 2
    err = relative_errors(got, want)
    worst = float(err.max()) if err.numel() else 0.0
    if worst <= ctx.check.tol.of(got.dtype):
        return 0
    if got.dtype == F64 and ctx.float32_accurate(got, want32):
        return 1
    tol32 = ctx.check.tol.float32
    if worst <= tol32 and want32 is not None:
        err32 = relative_errors(got, want32)
        if not err32.numel() or float(err32.max()) <= tol32:
            return 1
    return 2


def _levels(ctx: Context, op: Op, call: RecordedCall) -> tuple[int, bool] | None:
    """(level of the real entries, whether padded entries differ) for one call: outputs, and
    for the differentiable inputs the gradients (weighted on real outputs only); None where the
    adapter refuses the call (``Unsupported``). Outputs shaped like the call's mask are split by
    it; a call on float32 inputs has no float32 level."""
    args, kwargs = list(call.args), dict(call.kwargs)
    mask = next((a for a in args + list(kwargs.values())
                 if isinstance(a, torch.Tensor) and a.dtype == torch.bool), None)
    names = list(inspect.signature(getattr(refimpl, op.name)).parameters)

    def split(x):
        if mask is not None and x.shape == mask.shape:
            return x[mask], x[~mask]
        return x.reshape(-1), x.reshape(-1)[:0]

    try:
        mine = ([a for a in args], dict(kwargs))
        theirs = ([a for a in args], dict(kwargs))
        leaves: tuple[list, list] = ([], [])
        for i in op.diff:
            for (a, k), out in zip((mine, theirs), leaves):
                where, key = (a, i) if i < len(a) else (k, names[i])
                where[key] = where[key].detach().clone().requires_grad_(True)
                out.append(where[key])
        outs, refs = ctx.fn(*mine[0], **mine[1]), op.reference(*theirs[0], **theirs[1])
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        refs = list(refs) if isinstance(refs, tuple) else [refs]
        refs32 = reference32(op, args, kwargs) or [None] * len(refs)
        if len(outs) != len(refs) or any(not isinstance(o, torch.Tensor) or o.shape != r.shape
                                         for o, r in zip(outs, refs)):
            return 2, False
        real, padded = 0, False
        for o, r, r32 in zip(outs, refs, refs32):
            (o_re, o_pad), (r_re, r_pad) = split(o.detach()), split(r.detach())
            real = max(real, _level(ctx, o_re, r_re, None if r32 is None else split(r32)[0]))
            padded |= _level(ctx, o_pad, r_pad, None) > 0
        if op.diff:
            w = [x.to(r.device) for x, r in zip(gradient_weights(refs), refs)]
            w = [x * mask if mask is not None and x.shape == mask.shape else x for x in w]
            got, want = weighted_grads(outs, leaves[0], w), weighted_grads(refs, leaves[1], w)
            want32 = reference_grads32(op, theirs[0], theirs[1], w) or [None] * len(want)
            for g, r, r32 in zip(got, want, want32):
                (g_re, g_pad), (r_re, r_pad) = split(g), split(r)
                real = max(real, _level(ctx, g_re, r_re, None if r32 is None else split(r32)[0]))
                padded |= _level(ctx, g_pad, r_pad, None) > 0
        return real, padded
    except Unsupported:
        return None
    except Exception:                                                 # noqa: BLE001
        return 2, False


def _same_gradient(ctx: Context, op: Op, call: RecordedCall) -> bool | None:
    """Whether the adapter's gradients of ``call`` (weighted as in ``weighted_grads``) equal refimpl's
    within the check's tolerance (float32 arithmetic accepted as in ``Context.compare``); None
    where the adapter refuses the call (``Unsupported``)."""
    names = list(inspect.signature(getattr(refimpl, op.name)).parameters)
    mine, theirs = (list(call.args), dict(call.kwargs)), (list(call.args), dict(call.kwargs))
    leaves: tuple[list, list] = ([], [])
    for i in op.diff:
        for (args, kwargs), out in zip((mine, theirs), leaves):
            where, key = (args, i) if i < len(args) else (kwargs, names[i])
            if isinstance(where, dict) and key not in where:
                return False
            where[key] = where[key].detach().clone().requires_grad_(True)
            out.append(where[key])
    try:
        outs, refs = ctx.fn(*mine[0], **mine[1]), op.reference(*theirs[0], **theirs[1])
        outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
        refs = list(refs) if isinstance(refs, tuple) else [refs]
        if len(outs) != len(refs):
            return False
        w = [x.to(r.device) for x, r in zip(gradient_weights(refs), refs)]
        got, want = weighted_grads(outs, leaves[0], w), weighted_grads(refs, leaves[1], w)
        want32 = reference_grads32(op, theirs[0], theirs[1], w)
    except Unsupported:
        return None
    except Exception:                                                 # noqa: BLE001
        return False
    for k, (g, r) in enumerate(zip(got, want)):
        if g.shape != r.shape:
            return False
        err = relative_errors(g, r)
        if (err.numel() and float(err.max()) > ctx.check.tol.of(g.dtype)
                and not (g.dtype == F64 and ctx.float32_accurate(g, _nth(want32, k)))):
            return False
    return True


# --- the thorough tier (--thorough): Hypothesis-drawn padded batches ------------------------------

SETTINGS = settings(max_examples=60, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


def _padded(dtype):
    return st.integers(1, 6).flatmap(lambda T: st.lists(st.integers(1, T), min_size=1, max_size=6)
                                     .map(lambda ls: (tuple(ls), T)))


def _register_thorough(op: Op):
    if op.samples[0].lengths == (1,) * 6 or op.samples[0].group_sizes:
        return                                          # pairs and groups: fixed shapes suffice

    @check(f"{op.name}/matches-reference-random-inputs", kind="reference",
           section=SECTION[op.name],
           equation=f"{op.name} equals refimpl.{op.name} on Hypothesis-drawn padded batches",
           hint="the message shows the shrunk counterexample's lengths, width and seed",
           mutants=op.mutants.get("matches-reference", ()) + (f"{op.name}~scaled",),
           thorough=True)
    def body(ctx: Context, op=op):
        @SETTINGS
        @given(shape=_padded(None), seed=st.integers(0, 2 ** 31 - 1),
               dtype=st.sampled_from([torch.float64, torch.float32]),
               variant=st.sampled_from(op.variants))
        def run(shape, seed, dtype, variant):
            lengths, T = shape
            if op.name == "batch_normalized_advantages" and sum(lengths) < 2:
                return
            sample = Sample("random", dtype, lengths=lengths, T=T)
            ctx.gen.manual_seed(seed)
            args, kwargs = op.build(ctx, sample)
            kwargs = {**kwargs, **variant}
            ctx.on(f"random lengths={list(lengths)} T={T} seed={seed} {str(dtype)[6:]} {variant}")
            try:
                args, kwargs = ctx.resolve(args, kwargs, tuple(variant))
                out = ctx.call(*args, **kwargs)
            except Unsupported as exc:               # this draw only; others still run
                ctx.unsupported.append(f"{ctx.sample}: {exc}")
                return
            ctx.ran += 1
            ref = op.reference(*args, **kwargs)
            refs = list(ref) if isinstance(ref, tuple) else [ref]
            refs32 = reference32(op, args, kwargs)
            outs = (list(ctx.expect_pair(out, out_shape(op, sample), dtype)) if op.out == "pair"
                    else [ctx.expect_tensor(out, out_shape(op, sample), dtype)])
            for i, (o, r) in enumerate(zip(outs, refs)):
                ctx.compare(o, r, f"{op.name} output {i}", expected32=_nth(refs32, i))
        run()


def register_op(op: Op) -> Op:
    """Register the generic checks (and the thorough tier) of one canonical function."""
    OPS[op.name] = op
    _register_generic(op)
    _register_thorough(op)
    return op


OPS: dict[str, Op] = {}


def agg_weights(mask: torch.Tensor, mode: str, norm_len=None) -> torch.Tensor:
    """d aggregate(x, mask, mode, norm_len) / d x, float64: the weight of each token in the loss
    (aggregation is linear in x, so this does not depend on x)."""
    x = torch.zeros(mask.shape, dtype=F64, requires_grad=True)
    (w,) = torch.autograd.grad(refimpl.aggregate(x, mask, mode, norm_len), x)
    return w


def lengths_mask(lengths, T):
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# --- input checks ---------------------------------------------------------------------------------

def _rejects(ctx: Context, control: tuple, bad: tuple, argument: str):
    """The control call must succeed; the bad call must raise (ValueError naming ``argument``
    passes clean; another exception passes with a note; a silent number fails)."""
    ctx.on("control (valid input)")
    args, kwargs = control
    ctx.call(*args, **kwargs)                 # options fitted to what the variant honours
    ctx.on(f"invalid {argument}")
    args, kwargs = ctx.resolve(*bad, about=(argument,))
    try:
        out = ctx.fn(*args, **kwargs)
    except Unsupported:
        raise
    except ValueError as exc:
        if argument not in str(exc):
            ctx.note(f"ValueError raised, but its message does not name {argument!r}: {exc}")
        return
    except Exception as exc:                                          # noqa: BLE001
        ctx.note(f"rejected with {type(exc).__name__} (ValueError preferred): {exc}")
        return
    kind = type(out).__name__
    raise CheckFailed(f"invalid {argument} was accepted and answered with a {kind}; it should "
                      "raise ValueError", sample=ctx.sample)


def input_check(id, argument, control, bad, hint, mutants=()):
    """Register the check ``id``: ``control`` (a valid call) must succeed and ``bad`` (the same
    call with ``argument`` invalid) must raise. Both are ``ctx -> (args, kwargs)``."""
    caller = sys._getframe(1)

    @check(id, kind="input", section="invalid-arguments",
           equation=f"{argument} invalid -> ValueError", hint=hint,
           mutants=tuple(mutants) + (id.split("/")[0] + "~swallows_errors",),
           defined_at=(caller.f_code.co_filename, caller.f_lineno))
    def body(ctx: Context):
        _rejects(ctx, control(ctx), bad(ctx), argument)
    return body


def rand_bt(ctx, B=3, T=4):
    return ctx.randn(B, T)


M = lengths_mask([3, 1, 2], 4)
HOLE = torch.tensor([[True, False, True, False], [True, True, False, False], [True, False, False, False]])
EMPTY = torch.tensor([[True, True, False, False], [False, False, False, False], [True, False, False, False]])


# --- exact checks: the tabular policy -------------------------------------------------------------

EXACT = Tolerance(1e-10, 2e-5, "float64: finite sums of at most ~10^4 terms of size ~1, a few "
                  "hundred ulps; float32 (an adapter computing in float32): 2e-5 relative")


def tabular_policy(max_len=2, seed=1, n_prompts=2):
    pol = tab.TabularPolicy.random(n_prompts=n_prompts, n_tokens=2, max_len=max_len, seed=seed)
    scores = torch.randn(pol.n_prompts, pol.n_completions,
                         generator=torch.Generator().manual_seed(seed + 2), dtype=F64)
    return pol, scores


def bias_factor(g, ref):
    return float((g.flatten() @ ref.flatten()) / (ref.flatten() @ ref.flatten()))


def tuple_group_advantages(ctx: Context, tup, scores, **kwargs):
    """One adapter call on every tuple; returns (advantages (K, G) float64, output dtype)."""
    R = scores[tup.prompt, tup.completion]
    ids = torch.arange(len(tup)).repeat_interleave(tup.size)
    out = ctx.expect_tensor(ctx.call(R.flatten(), ids, about=tuple(kwargs), **kwargs), (R.numel(),), None, "advantages")
    return out.detach().to(F64).reshape(R.shape), out.dtype


def all_rows(pol):
    """Every response of every prompt as one (P*C, L) batch."""
    L = pol.tree.max_len
    return pol.mask.repeat(pol.n_prompts, 1), L


# --- group estimators -----------------------------------------------------------------------------

def golden_min(f, lo, hi, iters=200):
    """Minimiser of a unimodal f on [lo, hi] by golden-section search (values only)."""
    phi = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - phi * (b - a), a + phi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + phi * (b - a)
            fd = f(d)
    return (a + b) / 2


MINIMISER = Tolerance(1e-6, 2e-3, "a golden-section search on loss values locates a quadratic "
                      "minimum to about sqrt(machine eps) times its scale")


# --- mutants ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutant:
    name: str
    replaces: str
    fn: Callable
    bug: str


MUTANTS: dict[str, Mutant] = {}


def mutant(replaces: str, bug: str):
    def register(fn):
        MUTANTS[fn.__name__] = Mutant(fn.__name__, replaces, fn, bug)
        return fn
    return register


def zero_pad(x, m):
    return torch.where(m, x, torch.zeros_like(x))


# --- returns and GAE -----------------------------------------------------------------------------

def _first_float(args):
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return i
    return None


def _map_out(out, f):
    return tuple(f(o) for o in out) if isinstance(out, tuple) else f(out)


def _generic(fn_name: str, bug: str):
    ref = getattr(refimpl, fn_name)

    def in_place(*args, **kwargs):
        out = ref(*args, **kwargs)
        i = _first_float(args)
        with torch.no_grad():
            args[i].mul_(-1.0).add_(0.5)
        return out

    def float32_out(*args, **kwargs):
        return _map_out(ref(*args, **kwargs), lambda o: o.float())

    def _padded_sum(args):
        mask = next((a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.bool), None)
        total = 0.0
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and mask is not None \
                    and a.shape == mask.shape:
                total = total + torch.where(mask, torch.zeros_like(a), a).sum()
        return total

    def nan_through_mask(*args, **kwargs):
        out = ref(*args, **kwargs)
        leak = _padded_sum(args)
        return _map_out(out, lambda o: o + 0.0 * leak)              # NaN * 0 = NaN; 1e30 * 0 = 0

    def reads_padding(*args, **kwargs):
        out = ref(*args, **kwargs)
        leak = _padded_sum(args)
        return _map_out(out, lambda o: o + 1e-40 * leak)

    def detached(*args, **kwargs):
        args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        return ref(*args, **kwargs)

    def swallows_errors(*args, **kwargs):
        try:
            return ref(*args, **kwargs)
        except ValueError:
            return torch.zeros(())

    def scaled(*args, **kwargs):
        return _map_out(ref(*args, **kwargs), lambda o: 1.01 * o)

    return {"in_place": in_place, "float32_out": float32_out, "nan_through_mask": nan_through_mask,
            "reads_padding": reads_padding, "detached": detached,
            "swallows_errors": swallows_errors, "scaled": scaled}[bug]


GENERIC_BUGS = {
    "in_place": "modifies its first float input in place",
    "float32_out": "returns float32 whatever the input dtype",
    "nan_through_mask": "masks by multiplication: NaN or inf at padding reaches the output",
    "reads_padding": "padded values reach the output (finite garbage too)",
    "detached": "inputs detached: no gradient flows",
    "swallows_errors": "invalid input answered with a silent 0 instead of a ValueError",
    "scaled": "output off by 1%",
}


def get(name: str) -> Mutant:
    """A mutant by name: one of ``MUTANTS``, or a generic ``<function>~<bug>``."""
    if name in MUTANTS:
        return MUTANTS[name]
    fn_name, _, bug = name.partition("~")
    if bug not in GENERIC_BUGS or not hasattr(refimpl, fn_name):
        raise KeyError(f"unknown mutant {name!r}")
    return Mutant(name, fn_name, _generic(fn_name, bug), GENERIC_BUGS[bug])


def mutant_adapter(name: str):
    """refimpl as an adapter, with the one function the mutant breaks replaced by it."""
    mt = get(name)
    attrs = {f: staticmethod(getattr(refimpl, f)) for f in refimpl.CANONICAL + ("train_step", "train_run")}
    attrs.update(name="mutant-" + name.replace("~", "-"), capabilities={},
                 known_deviations={}, shims={})
    attrs[mt.replaces] = staticmethod(mt.fn)
    return type(f"Mutant_{name.replace('~', '_')}", (), attrs)()
