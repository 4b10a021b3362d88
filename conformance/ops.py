"""One entry per canonical function (PyTorch OpInfo-style): how to build sample calls, which
arguments are padded and which are differentiated, and which mutants each generic check rejects.

The generic checks in ``conformance.checks.generic`` consume these entries: adding a function
is adding an entry; its reference values come from ``refimpl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import refimpl

F32, F64 = torch.float32, torch.float64


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
                  options={"ids": (4, 9, 2, 9, 4, 2, 2, 4, 9)}))
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


def _bt(ctx, s, scale=1.0, shift=0.0):
    return ctx.randn(s.B, s.T, dtype=s.dtype, scale=scale, shift=shift)


def _group_scores(ctx, s):
    ids = torch.tensor(s.options["ids"], dtype=torch.int64)
    scores = ctx.randn(s.B, dtype=s.dtype)
    if "constant_group" in s.options:
        scores = torch.where(ids == s.options["constant_group"], torch.full_like(scores, 0.7), scores)
    return scores, ids


def _pairs(ctx, s, n=6):
    return tuple(ctx.randn(n, dtype=s.dtype, scale=2.0, shift=-10.0) for _ in range(4))


OPS: dict[str, Op] = {op.name: op for op in [
    Op("discounted_returns", lambda c, s: ((_bt(c, s), s.mask()), {}), PADDED, "BT",
       padded=(0,), diff=(0,), variants=({"gamma": 1.0}, {"gamma": 0.9}),
       mutants={"matches-reference": ("returns_forward_in_time",),
                "dtype-kept": ("returns_cast_to_float32",)}),
    Op("gae", lambda c, s: ((_bt(c, s), _bt(c, s), s.mask()), {}), PADDED, "pair",
       padded=(0, 1), diff=(0, 1),
       variants=({"gamma": 1.0, "lam": 0.95}, {"gamma": 0.9, "lam": 0.0}, {"gamma": 0.99, "lam": 1.0}),
       mutants={"matches-reference": ("gae_off_by_one_bootstrap", "gae_forward_accumulation",
                                      "gae_returns_without_value", "gae_gamma_lam_swapped"),
                "padding-nan": ("gae_bootstraps_past_last_token",),
                "padding-1e30": ("gae_bootstraps_past_last_token",)}),
    Op("kl_penalized_rewards",
       lambda c, s: ((c.randn(s.B, dtype=s.dtype), _bt(c, s, 0.5, -1.0), _bt(c, s, 0.5, -1.0),
                      s.mask()), {"beta": 0.1}), PADDED, "BT", padded=(1, 2), diff=(1,),
       variants=({"kind": "k1"}, {"kind": "k2"}, {"kind": "k3"}),
       mutants={"matches-reference": ("score_at_padded_end", "kl_reward_sign_flipped")}),
    Op("group_normalized_advantages", lambda c, s: (_group_scores(c, s), {}), GROUPS, "B",
       variants=({"scale": "group"}, {"scale": "batch"}, {"scale": "none"}),
       mutants={"matches-reference": ("group_std_biased", "group_std_over_batch",
                                      "batch_scale_std_of_centred", "group_mean_not_subtracted",
                                      "group_none_excludes_self", "group_divides_by_variance")}),
    Op("leave_one_out_advantages", lambda c, s: (_group_scores(c, s), {}), GROUPS, "B",
       mutants={"matches-reference": ("loo_includes_self", "loo_divides_by_group_size")}),
    Op("batch_normalized_advantages", lambda c, s: ((_bt(c, s, 2.0, 0.5), s.mask()), {}),
       PADDED, "BT", padded=(0,),          # advantages may be detached (API.md): no gradient
       mutants={"matches-reference": ("whiten_biased_var", "whiten_reads_padding"),
                "padding-1e30": ("whiten_reads_padding",), "padding-nan": ("whiten_reads_padding",),
                "no-input-mutation": ("whiten_in_place",)}),
    Op("kl_estimate", lambda c, s: ((_bt(c, s, 0.7, -1.0), _bt(c, s, 0.7, -1.0), s.mask()), {}),
       PADDED, "BT", padded=(0, 1), diff=(0,),
       variants=({"kind": "k1"}, {"kind": "k2"}, {"kind": "k3"}),
       mutants={"matches-reference": ("k3_ratio_inverted", "k3_log_sign_flipped",
                                      "k2_missing_half", "k1_ratio_inverted"),
                "padding-nan": ("kl_masks_after_exp",), "padding-inf": ("kl_masks_after_exp",),
                "dtype-kept": ("kl_casts_to_float32",)}),
    Op("aggregate", lambda c, s: ((_bt(c, s), s.mask()), {}), PADDED, "scalar",
       padded=(0,), diff=(0,),
       variants=({"mode": "token-mean"}, {"mode": "seq-mean-token-mean"},
                 {"mode": "seq-mean-token-sum"}, {"mode": "seq-mean-token-sum-norm"},
                 {"mode": "seq-mean-token-sum-norm", "norm_len": 16}),
       mutants={"matches-reference": ("token_mean_divides_by_padded_size",
                                      "sum_norm_uses_longest_row"),
                "padding-nan": ("aggregate_multiplies_by_mask",)}),
    Op("policy_gradient_loss", lambda c, s: ((_bt(c, s, 0.5, -1.5), c.randn(s.B, dtype=s.dtype),
                                              s.mask()), {}), PADDED, "scalar",
       padded=(0,), diff=(0,),
       variants=({"agg": "token-mean"}, {"agg": "seq-mean-token-mean"},
                 {"agg": "seq-mean-token-sum"}, {"agg": "seq-mean-token-sum-norm"}),
       mutants={"matches-reference": ("pg_sign_flipped", "pg_ignores_agg")}),
    # one-token rows carry one advantage per sequence, (B,), the others one per token, (B, T)
    Op("ppo_clip_loss", lambda c, s: ((_bt(c, s, 0.3, -1.5), _bt(c, s, 0.3, -1.5),
                                       c.randn(s.B, dtype=s.dtype) if s.name == "one_token_rows"
                                       else c.randn(s.B, s.T, dtype=s.dtype), s.mask()), {}),
       PADDED, "scalar", padded=(0, 1, 2), diff=(0,),
       variants=({}, {"clip_low": 0.2, "clip_high": 0.28}, {"dual_clip": 3.0},
                 {"agg": "seq-mean-token-mean"}, {"agg": "seq-mean-token-sum"},
                 {"agg": "seq-mean-token-sum-norm"}),
       mutants={"matches-reference": ("ppo_min_max_swapped", "ppo_clip_high_ignored",
                                      "ppo_ratio_inverted", "ppo_dual_clip_max"),
                "gradient-matches-reference": ("ppo_dual_clip_on_positive_advantages",)}),
    Op("value_loss", lambda c, s: ((_bt(c, s), _bt(c, s), _bt(c, s), s.mask()), {}), PADDED,
       "scalar", padded=(0, 1, 2), diff=(0,),
       variants=({}, {"clip": 0.2}, {"agg": "seq-mean-token-mean"}, {"agg": "seq-mean-token-sum"},
                 {"agg": "seq-mean-token-sum-norm"}),
       mutants={"matches-reference": ("value_clip_min", "value_loss_no_half")}),
    Op("bradley_terry_loss", lambda c, s: ((c.randn(6, dtype=s.dtype), c.randn(6, dtype=s.dtype)), {}),
       PAIRS, "N", diff=(0, 1), variants=({}, {"margin": 0.5}),
       mutants={"matches-reference": ("bt_margin_sign", "bt_sign_flipped")}),
    Op("dpo_loss", lambda c, s: (_pairs(c, s), {}), PAIRS, "N", diff=(0, 1),
       variants=({"beta": 0.1}, {"beta": 0.5, "label_smoothing": 0.1}),
       mutants={"matches-reference": ("dpo_smoothing_swapped", "dpo_ignores_reference",
                                      "dpo_sign_flipped")}),
    Op("ipo_loss", lambda c, s: (_pairs(c, s), {}), PAIRS, "N", diff=(0, 1),
       variants=({"tau": 0.1}, {"tau": 1.0}),
       mutants={"matches-reference": ("ipo_tau_not_halved",)}),
    Op("token_logprobs",
       lambda c, s: ((c.randn(s.B, s.T, 5, dtype=s.dtype, scale=2.0),
                      torch.randint(0, 5, (s.B, s.T), generator=c.gen)), {}), PADDED, "BT",
       diff=(0,), mutants={"matches-reference": ("logprobs_softmax_over_time",)}),
    Op("sequence_logprob", lambda c, s: ((_bt(c, s, 1.0, -2.0), s.mask()), {}), PADDED, "B",
       padded=(0,), diff=(0,),
       mutants={"matches-reference": ("seq_logprob_reads_padding",),
                "padding-nan": ("seq_logprob_reads_padding",)}),
]}


def out_shape(op: Op, sample: Sample):
    return {"BT": (sample.B, sample.T), "pair": (sample.B, sample.T), "B": (sample.B,),
            "scalar": (), "N": (6,)}[op.out]
