"""Generic properties of every canonical function, driven by one table (PyTorch OpInfo-style):
padding invariance (NaN, +-inf and 1e30 at padded positions, values and gradients), dtype kept,
device kept, inputs never modified, float32 agreeing with float64 to float32 accuracy.

Each entry of ``ENTRIES`` knows how to build a call from a random padded batch; adding a
function is adding an entry. The padding tests are split by fill value so that a function that
masks by multiplication is seen to survive finite garbage (1e30 * 0 = 0) and fail on NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from refimpl.aggregation import AGG_MODES
from tests.harness import Padded, against, padded_batches


@dataclass(frozen=True)
class Entry:
    """One call of a canonical function built from a padded batch.

    ``build(b) -> kwargs``; ``padded``: (B, T) arguments whose padded positions must not matter;
    ``diff``: arguments the contract differentiates with respect to."""
    id: str
    fn: str
    build: Callable[[Padded], dict]
    padded: tuple[str, ...] = ()
    diff: tuple[str, ...] = ()
    min_real: int = 1
    options: dict = field(default_factory=dict)


def _entries() -> list[Entry]:
    out = [
        Entry("discounted_returns", "discounted_returns",
              lambda b: dict(rewards=b.randn(), mask=b.mask, gamma=0.9),
              padded=("rewards",), diff=("rewards",)),
        Entry("gae", "gae",
              lambda b: dict(rewards=b.randn(), values=b.randn(), mask=b.mask, gamma=0.9, lam=0.8),
              padded=("rewards", "values"), diff=("rewards", "values")),
        Entry("batch_normalized_advantages", "batch_normalized_advantages",
              lambda b: dict(advantages=b.randn(), mask=b.mask),
              padded=("advantages",), diff=("advantages",), min_real=2),
        Entry("sequence_logprob", "sequence_logprob",
              lambda b: dict(token_logp=b.randn() - 2, mask=b.mask),
              padded=("token_logp",), diff=("token_logp",)),
        Entry("value_loss/clip", "value_loss",
              lambda b: dict(values=b.randn(), old_values=b.randn(), returns=b.randn(),
                             mask=b.mask, clip=0.2),
              padded=("values", "old_values", "returns"), diff=("values",)),
        Entry("ppo_clip_loss/dual", "ppo_clip_loss",
              lambda b: dict(logp=b.randn(scale=0.3) - 1, old_logp=b.randn(scale=0.3) - 1,
                             advantages=b.randn(), mask=b.mask, clip_low=0.2, clip_high=0.28,
                             dual_clip=3.0),
              padded=("logp", "old_logp", "advantages"), diff=("logp",)),
    ]
    for kind in ("k1", "k2", "k3"):
        out.append(Entry(f"kl_estimate/{kind}", "kl_estimate",
                         lambda b, kind=kind: dict(logp=b.randn() - 1, ref_logp=b.randn() - 1,
                                                   mask=b.mask, kind=kind),
                         padded=("logp", "ref_logp"), diff=("logp",)))
        out.append(Entry(f"kl_penalized_rewards/{kind}", "kl_penalized_rewards",
                         lambda b, kind=kind: dict(scores=b.randn(b.B), logp=b.randn() - 1,
                                                   ref_logp=b.randn() - 1, mask=b.mask, beta=0.1,
                                                   kind=kind),
                         padded=("logp", "ref_logp"), diff=("logp",)))
    for mode in AGG_MODES:
        out.append(Entry(f"aggregate/{mode}", "aggregate",
                         lambda b, mode=mode: dict(values=b.randn(), mask=b.mask, mode=mode),
                         padded=("values",), diff=("values",)))
        out.append(Entry(f"policy_gradient_loss/{mode}", "policy_gradient_loss",
                         lambda b, mode=mode: dict(logp=b.randn() - 1, advantages=b.randn(),
                                                   mask=b.mask, agg=mode),
                         padded=("logp", "advantages"), diff=("logp",)))
    return out


# functions without a mask: dtype, mutation and float32 checks only
def _unmasked() -> list[Entry]:
    def ids(b):
        return torch.arange(b.B) % max(1, b.B // 2)
    return [
        Entry("group_normalized_advantages", "group_normalized_advantages",
              lambda b: dict(scores=b.randn(b.B), group_ids=ids(b), scale="group"), min_real=4),
        Entry("leave_one_out_advantages", "leave_one_out_advantages",
              lambda b: dict(scores=b.randn(b.B), group_ids=ids(b)), min_real=4),
        Entry("kl_estimate/no-mask", "kl_estimate",
              lambda b: dict(logp=b.randn() - 1, ref_logp=b.randn() - 1, mask=None, kind="k3"),
              diff=("logp",)),
        Entry("bradley_terry_loss", "bradley_terry_loss",
              lambda b: dict(chosen_rewards=b.randn(b.B), rejected_rewards=b.randn(b.B),
                             margin=b.randn(b.B)), diff=("chosen_rewards", "rejected_rewards")),
        Entry("dpo_loss", "dpo_loss",
              lambda b: dict(policy_chosen_logps=b.randn(b.B) - 5, policy_rejected_logps=b.randn(b.B) - 5,
                             ref_chosen_logps=b.randn(b.B) - 5, ref_rejected_logps=b.randn(b.B) - 5,
                             beta=0.5, label_smoothing=0.1), diff=("policy_chosen_logps",)),
        Entry("ipo_loss", "ipo_loss",
              lambda b: dict(policy_chosen_logps=b.randn(b.B) - 5, policy_rejected_logps=b.randn(b.B) - 5,
                             ref_chosen_logps=b.randn(b.B) - 5, ref_rejected_logps=b.randn(b.B) - 5,
                             tau=0.5), diff=("policy_chosen_logps",)),
        Entry("token_logprobs", "token_logprobs",
              lambda b: dict(logits=b.randn(b.B, b.T, 5),
                             tokens=torch.randint(0, 5, (b.B, b.T),
                                                  generator=torch.Generator().manual_seed(b.seed))),
              diff=("logits",)),
    ]


MASKED = _entries()
ALL = MASKED + _unmasked()


def _outputs(result) -> list[torch.Tensor]:
    return list(result) if isinstance(result, tuple) else [result]


def _run(rf, entry: Entry, kwargs: dict, diff=True):
    """Call the entry; return its outputs and the gradients of a fixed random functional."""
    kwargs = {k: (v.clone().requires_grad_(True) if diff and k in entry.diff else v)
              for k, v in kwargs.items()}
    outs = _outputs(getattr(rf, entry.fn)(**kwargs))
    grads = []
    if diff and entry.diff:
        gen = torch.Generator().manual_seed(0)
        total = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)).sum()
                    for o in outs)
        grads = torch.autograd.grad(total, [kwargs[k] for k in entry.diff], allow_unused=True)
        grads = [torch.zeros_like(kwargs[k]) if g is None else g for k, g in zip(entry.diff, grads)]
    return [o.detach() for o in outs], grads


def _check_padding(rf, b: Padded, fill: float):
    failures = []
    for entry in MASKED:
        if sum(b.lengths) < entry.min_real:
            continue
        kwargs = entry.build(b)
        clean_out, clean_grad = _run(rf, entry, kwargs)
        dirty = {k: (torch.where(b.mask, v, torch.full_like(v, fill)) if k in entry.padded else v)
                 for k, v in kwargs.items()}
        out, grad = _run(rf, entry, dirty)
        for i, (o, c) in enumerate(zip(out, clean_out)):
            if not torch.equal(o, c):
                failures.append(f"{entry.id}: output {i} changes when padding holds {fill} "
                                f"(max diff {float((o - c).abs().nan_to_num(float('inf')).max()):.3g})")
            if o.shape == b.mask.shape and not bool((o[~b.mask] == 0).all()):
                failures.append(f"{entry.id}: output {i} is not exactly 0 at padded positions")
        for name, g, c in zip(entry.diff, grad, clean_grad):
            if not bool((g[~b.mask] == 0).all()):
                failures.append(f"{entry.id}: d/d {name} is not exactly 0 at padded positions "
                                f"(padding = {fill})")
            elif not torch.equal(g, c):
                failures.append(f"{entry.id}: d/d {name} changes when padding holds {fill}")
    assert not failures, "padding leaks:\n  " + "\n  ".join(failures)


PADDING_MUTANTS = ("gae_bootstraps_past_last_token", "whiten_reads_padding",
                   "seq_logprob_reads_padding")
# one-token rows beside longer ones, and a full row: every kind of boundary
EDGES = Padded([1, 4, 2], 4, seed=13, dtype=torch.float64)


@against(*PADDING_MUTANTS, "aggregate_multiplies_by_mask", "kl_masks_after_exp")
@given(b=padded_batches(min_B=2))
@example(b=EDGES)
def test_padding_filled_with_nan_reaches_no_output_and_no_gradient(rf, b):
    _check_padding(rf, b, float("nan"))


@against(*PADDING_MUTANTS, "kl_masks_after_exp")
@given(b=padded_batches(min_B=2), sign=st.sampled_from([1.0, -1.0]))
@example(b=EDGES, sign=1.0)
@example(b=EDGES, sign=-1.0)
def test_padding_filled_with_inf_reaches_no_output_and_no_gradient(rf, b, sign):
    _check_padding(rf, b, sign * float("inf"))


@against(*PADDING_MUTANTS)
@given(b=padded_batches(min_B=2))
@example(b=EDGES)
def test_padding_filled_with_1e30_reaches_no_output_and_no_gradient(rf, b):
    """Finite garbage: a function that masks by multiplication survives this one."""
    _check_padding(rf, b, 1e30)


@against("returns_cast_to_float32", "kl_casts_to_float32")
@given(b=padded_batches(min_B=4))
@example(b=Padded([2, 3, 1, 3], 3, seed=1, dtype=torch.float64))
def test_output_dtype_is_the_input_dtype(rf, b):
    bad = []
    for entry in ALL:
        kwargs = entry.build(b)
        outs, _ = _run(rf, entry, kwargs, diff=False)
        bad += [f"{entry.id}: {o.dtype}, but should be {b.dtype}" for o in outs if o.dtype != b.dtype]
    assert not bad, "dtype not kept:\n  " + "\n  ".join(bad)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device on this machine; the device check runs where one is")
@against()
def test_output_device_is_the_input_device(rf):
    b = Padded([2, 3, 1, 3], 3, seed=1, dtype=torch.float32)
    for entry in ALL:
        kwargs = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in entry.build(b).items()}
        for o in _outputs(getattr(rf, entry.fn)(**kwargs)):
            assert o.device == kwargs[next(k for k, v in kwargs.items()
                                           if isinstance(v, torch.Tensor))].device, entry.id


@against("whiten_in_place")
@given(b=padded_batches(min_B=4))
@example(b=Padded([2, 3, 1, 3], 3, seed=1, dtype=torch.float64))
def test_inputs_are_never_modified(rf, b):
    changed = []
    for entry in ALL:
        kwargs = entry.build(b)
        before = {k: v.clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        _run(rf, entry, kwargs, diff=False)
        changed += [f"{entry.id}: argument {k}" for k, v in before.items()
                    if not torch.equal(kwargs[k], v)]
    assert not changed, "inputs modified in place:\n  " + "\n  ".join(changed)


@against("returns_accumulate_in_bfloat16")
@given(b=padded_batches(min_B=4, dtypes=(torch.float64,)))
@example(b=Padded([2, 3, 1, 3], 3, seed=1, dtype=torch.float64))
def test_float32_agrees_with_float64_to_float32_accuracy(rf, b):
    """Same inputs in float32 and float64: every output agrees within 1e-4 * (1 + |x|).

    float32 rounds at 6e-8 relative; these functions chain at most ~30 operations on values of
    order 10, so errors stay below ~1e-5; 1e-4 leaves a margin and still rejects bfloat16
    (8e-3 relative) accumulation."""
    bad = []
    for entry in ALL:
        kwargs64 = entry.build(b)
        kwargs32 = {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                    for k, v in kwargs64.items()}
        outs64, _ = _run(rf, entry, kwargs64, diff=False)
        outs32, _ = _run(rf, entry, kwargs32, diff=False)
        for o32, o64 in zip(outs32, outs64):
            err = ((o32.double() - o64).abs() / (1 + o64.abs())).max()
            if not float(err) <= 1e-4:
                bad.append(f"{entry.id}: relative error {float(err):.2e}")
    assert not bad, "float32 disagrees with float64:\n  " + "\n  ".join(bad)
