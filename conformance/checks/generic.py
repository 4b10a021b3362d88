"""Checks made from the op table: values and gradients against refimpl, padding invariance
(NaN, +-inf and 1e30, reported separately), no input mutation, dtype kept."""

from __future__ import annotations

import torch

from conformance.core import AdapterMisbehaved, CheckFailed, Context, Tolerance, check
from conformance.ops import OPS, Op, out_shape

API = "API.md"


def _outputs(ctx: Context, op: Op, sample, out, dtype) -> list[torch.Tensor]:
    shape = out_shape(op, sample)
    if op.out == "pair":
        return list(ctx.expect_pair(out, shape, dtype))
    return [ctx.expect_tensor(out, shape, dtype)]


def _calls(ctx: Context, op: Op, dtypes=(torch.float64, torch.float32)):
    """Yield (sample, variant options, args, kwargs) for every sample and variant. Loop bodies
    run inside ``ctx.variant()``, so an option the adapter cannot honour skips that variant only."""
    for sample in op.samples:
        if sample.dtype not in dtypes:
            continue
        for variant in op.variants:
            args, kwargs = op.build(ctx, sample)
            label = sample.label + (" " + ",".join(f"{k}={v}" for k, v in variant.items())
                                    if variant else "")
            ctx.on(label)
            yield sample, {**kwargs, **variant}, list(args)


def _weights(outs, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]


def _grads(outs, inputs, weights):
    total = sum((o * w).sum() for o, w in zip(outs, weights))
    if not total.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(total, inputs, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gs)]


def _register(op: Op):
    name = op.name
    clause = f"{API} {name}"

    @check(f"{name}/matches-reference", kind="reference", clause=clause,
           equation=f"values of {name} equal refimpl.{name} (the API.md definition)",
           hint=f"compare your {name} with refimpl.{name} on the failing sample; the message "
                "names the first entry that differs",
           mutants=op.mutants.get("matches-reference", ()) + (f"{name}~scaled",))
    def matches_reference(ctx: Context, op=op):
        for sample, kwargs, args in _calls(ctx, op):
            with ctx.variant():
                out = ctx.call(*args, **kwargs)
                ref = op.reference(*args, **kwargs)
                refs = list(ref) if isinstance(ref, tuple) else [ref]
                for i, (o, r) in enumerate(zip(_outputs(ctx, op, sample, out, sample.dtype), refs)):
                    ctx.compare(o, r, f"{name} output {i}" if len(refs) > 1 else name)

    if op.diff:
        @check(f"{name}/gradient-matches-reference", kind="gradient", clause=clause,
               equation=f"autograd gradients of {name} equal refimpl's",
               hint="the gradient differs from the reference's: look for a detach, a clamp or a "
                    "mask applied in the wrong place",
               mutants=op.mutants.get("gradient-matches-reference", ()) + (f"{name}~detached",))
        def gradient_matches_reference(ctx: Context, op=op):
            for sample, kwargs, args in _calls(ctx, op):
                with ctx.variant():
                    for i in op.diff:
                        args[i] = args[i].detach().clone().requires_grad_(True)
                    outs = _outputs(ctx, op, sample, ctx.call(*args, **kwargs), sample.dtype)
                    ref = op.reference(*args, **kwargs)
                    refs = list(ref) if isinstance(ref, tuple) else [ref]
                    w = _weights(refs)
                    inputs = [args[i] for i in op.diff]
                    got = _grads(outs, inputs, w)
                    want = _grads(refs, inputs, w)
                    for i, g, r in zip(op.diff, got, want):
                        ctx.compare(g, r, f"d {name} / d argument {i}")

    for fill_name, fills in (("nan", (float("nan"),)), ("inf", (float("inf"), float("-inf"))),
                             ("1e30", (1e30,))):
        if not op.padded:
            break

        @check(f"{name}/padding-{fill_name}", kind="property",
               clause=f"{API} Conventions: padding invariance",
               equation="f(x with padding p) = f(x with padding q); (B,T) outputs and gradients "
                        "are exactly 0 at padded positions",
               hint="replace padded entries by 0 with torch.where before any arithmetic; "
                    "multiplying by the mask keeps NaN and inf (NaN * 0 = NaN)",
               tol=Tolerance(0.0, 0.0, "padding must not change a single bit of the result"),
               mutants=op.mutants.get(f"padding-{fill_name}", ()) + (
                   (f"{name}~reads_padding",) if fill_name == "1e30" else
                   (f"{name}~nan_through_mask", f"{name}~reads_padding")))
        def padding(ctx: Context, op=op, fills=fills):
            for sample, kwargs, args in _calls(ctx, op):
                with ctx.variant():
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
                            w = _weights(clean)
                            g_clean = _grads(clean, [args[i] for i in op.diff], w)
                            g_dirty = _grads(outs, [dirty[i] for i in op.diff], w)
                            for i, gd, gc in zip(op.diff, g_dirty, g_clean):
                                ctx.compare(gd[~mask], torch.zeros(int((~mask).sum())),
                                            f"d/d argument {i} at padded positions (padding = {fill})",
                                            nan_is_failure=True)
                                ctx.compare(gd, gc, f"d/d argument {i} with padding = {fill}",
                                            nan_is_failure=True)

    @check(f"{name}/no-input-mutation", kind="property",
           clause=f"{API} Conventions: functions never modify their inputs",
           equation="inputs are bitwise the same after the call",
           hint="work on a copy (x = x.clone()) or use out-of-place operations (sub, not sub_)",
           mutants=op.mutants.get("no-input-mutation", ()) + (f"{name}~in_place",))
    def no_mutation(ctx: Context, op=op):
        for sample, kwargs, args in _calls(ctx, op):
            with ctx.variant():
                before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
                ctx.call(*args, check_mutation=False, **kwargs)
                for i, (a, b) in enumerate(zip(args, before)):
                    if isinstance(a, torch.Tensor) and not torch.equal(a.nan_to_num(), b.nan_to_num()):
                        raise CheckFailed(f"argument {i} ({tuple(a.shape)}) was modified in place",
                                          sample=ctx.sample)

    @check(f"{name}/dtype-kept", kind="property",
           clause=f"{API} Conventions: return the input's dtype",
           equation="float32 in -> float32 out; float64 in -> float64 out",
           hint="do not cast (.float(), .double()) the result; compute in the input's dtype",
           mutants=op.mutants.get("dtype-kept", ()) + (f"{name}~float32_out",))
    def dtype_kept(ctx: Context, op=op):
        for sample, kwargs, args in _calls(ctx, op):
            with ctx.variant():
                out = ctx.call(*args, **kwargs)
                for o in (out if isinstance(out, (tuple, list)) else [out]):
                    if not isinstance(o, torch.Tensor):
                        raise AdapterMisbehaved(f"output is {type(o).__name__}, not a tensor "
                                                f"[sample {ctx.sample}]")
                    if o.dtype != sample.dtype:
                        raise CheckFailed(f"output dtype {o.dtype}, but should be {sample.dtype}",
                                          sample=ctx.sample)


for _op in OPS.values():
    _register(_op)
