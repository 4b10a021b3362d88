"""The thorough tier (``rlconform certify --thorough``): each function against refimpl on inputs
drawn by Hypothesis (random batch sizes, widths, lengths, seeds, both dtypes), derandomized so a
report stays reproducible. A failure is shrunk to a small counterexample before it is reported."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance import Unsupported
from conformance.core import Context, check
from conformance.ops import OPS, Op, Sample, out_shape

SETTINGS = settings(max_examples=60, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


def _padded(dtype):
    return st.integers(1, 6).flatmap(lambda T: st.lists(st.integers(1, T), min_size=1, max_size=6)
                                     .map(lambda ls: (tuple(ls), T)))


def _register(op: Op):
    if op.samples[0].lengths == (1,) * 6 or op.samples[0].group_sizes:
        return                                          # pairs and groups: fixed shapes suffice

    @check(f"{op.name}/matches-reference-random-inputs", kind="reference",
           clause=f"API.md {op.name}",
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
                out = ctx.call(*args, **kwargs)
            except Unsupported as exc:               # this draw only; others still run
                ctx.unsupported.append(f"{ctx.sample}: {exc}")
                return
            ctx.ran += 1
            ref = op.reference(*args, **kwargs)
            refs = list(ref) if isinstance(ref, tuple) else [ref]
            outs = (list(ctx.expect_pair(out, out_shape(op, sample), dtype)) if op.out == "pair"
                    else [ctx.expect_tensor(out, out_shape(op, sample), dtype)])
            for i, (o, r) in enumerate(zip(outs, refs)):
                ctx.compare(o, r, f"{op.name} output {i}")
        run()


for _op in OPS.values():
    _register(_op)
