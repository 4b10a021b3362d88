"""Adapters for Liger Kernel 0.8.5 (``pip install liger-kernel==0.8.5``; pulls triton, unused here).

Liger's RL and preference losses are fused "linear + loss" autograd functions that process the
batch in chunks of rows; the loss arithmetic of one chunk is a pure tensor function that runs on
a CPU, and that function is what these adapters call (the Triton ops under ``liger_kernel/ops/``
need a GPU and are not used):

| canonical       | Liger code path                                                              |
|-----------------|------------------------------------------------------------------------------|
| `ppo_clip_loss` | `LigerFusedLinearGRPOFunction.ppo_loss_fn` (chunked_loss/grpo_loss.py:101), `beta = 0` |
| `kl_estimate`   | `k3_loss_fn(ref, logp)` (chunked_loss/grpo_loss.py:10), the KL term of that loss |
| `dpo_loss`      | `LigerFusedLinearDPOFunction.preference_loss_fn` (chunked_loss/dpo_loss.py:9), `loss_type="sigmoid"` |

Calling conventions (translations only, no values changed):
- Our (B, T) batch is one chunk that is the whole batch: ``attention_mask`` and
  ``full_attention_mask`` are both the caller's mask (Liger's ``forward`` passes its whole mask as
  ``full_attention_mask``, fused_linear_ppo.py:263), ``num_items_in_batch`` is None (the DAPO
  normaliser is then the mask's token count, fused_linear_ppo.py:462-496).
- ``clip_low``/``clip_high`` are ``epsilon_low``/``epsilon_high`` (``clip_high`` None: ``clip_low``);
  ``dual_clip`` is Liger's ``delta`` (INTELLECT-2 two-sided clipping: for A < 0 the ratio is clamped
  at delta, which equals the dual-clip floor -c A whenever c > 1 + clip_high); ``norm_len`` is
  ``max_completion_length`` (``dr_grpo``; the padded width T when None).
- ``advantages`` must be ``(B,)``: ``ppo_loss_fn`` broadcasts ``advantages.unsqueeze(1)`` over tokens
  (grpo_loss.py:199-200) and has no per-token advantages; ``(B, T)`` is ``Unsupported``.
- ``dpo_loss``: the function returns the batch mean (``sum / n_pairs`` with ``n_pairs =
  full_target.shape[0] // 2``, dpo_loss.py:58-61): one call per pair, with a stub ``full_target`` of
  two rows (only its first dimension is read).
- Outputs are cast back to the input's dtype.

Shims (steps Liger's own trainer code does right before the call): ``old_per_token_logps`` is cast
to float32 (``.float()``), as ``_compute_loss_from_logps`` does (fused_linear_ppo.py:531); and the
per-token KL is multiplied by the mask, as ``ppo_loss_fn`` does with the whole per-token loss.

Variants: GRPO's ``loss_type`` selects the aggregation. ``liger`` is Liger's defaults
(``LigerFusedLinearGRPOLoss(loss_type=...)`` read at run time, "dapo" in 0.8.5, plus DPO);
``liger-grpo`` (seq-mean-token-mean), ``liger-dr_grpo`` (seq-mean-token-sum-norm), ``liger-dapo``
and ``liger-bnpo`` (token-mean) carry the GRPO functions; ``liger-dpo`` carries DPO. Each honours only
its own aggregation and raises ``Unsupported`` for the other API.md modes. Not mapped: the loss
types cispo, sapo, vespo and luspo (not the API.md clipped objective); DPO ``loss_type="ipo"``
raises NotImplementedError in 0.8.5 (dpo_loss.py:68-72), so there is no ``ipo_loss``; ORPO, SimPO,
CPO and KTO have no reference model in their losses and match no API.md function. Liger computes
no advantages, returns, GAE or log-probabilities as pure CPU functions.
"""

from __future__ import annotations

import functools
import inspect
from types import SimpleNamespace

import torch

from conformance import Unsupported

LIGER = "0.8.5"
GL = "liger_kernel/chunked_loss/grpo_loss.py"
PPO = "liger_kernel/chunked_loss/fused_linear_ppo.py"
DL = "liger_kernel/chunked_loss/dpo_loss.py"
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
# loss_type -> the API.md aggregation it performs (grpo_loss.py:224-241)
LOSS_TYPE_AGG = {"grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm",
                 "dapo": "token-mean", "bnpo": "token-mean"}


def _at(where: str) -> str:
    return f"{where}, liger-kernel {LIGER}"


@functools.lru_cache(maxsize=None)
def _liger():
    """Import Liger once, on first use (this module loads without Liger installed)."""
    from liger_kernel.chunked_loss.dpo_loss import (
        LigerFusedLinearDPOFunction,
        LigerFusedLinearDPOLoss,
    )
    from liger_kernel.chunked_loss.grpo_loss import (
        LigerFusedLinearGRPOFunction,
        LigerFusedLinearGRPOLoss,
        k3_loss_fn,
    )
    return SimpleNamespace(GRPO=LigerFusedLinearGRPOFunction, GRPOLoss=LigerFusedLinearGRPOLoss,
                           k3=k3_loss_fn, DPO=LigerFusedLinearDPOFunction,
                           DPOLoss=LigerFusedLinearDPOLoss)


def _default(cls, name):
    return inspect.signature(cls.__init__).parameters[name].default


def _probe_kind(kl) -> str | None:
    """Which API.md estimator a KL function computes, by evaluating it at a few log-ratios."""
    l = torch.tensor([-1.5, -0.3, 0.4, 2.0], dtype=torch.float64)
    ref = torch.zeros_like(l)
    got = kl(ref, l)                                    # called as ppo_loss_fn calls it: (ref, logp)
    for kind, want in (("k1", l), ("k2", l ** 2 / 2), ("k3", torch.exp(-l) - 1 + l)):
        if torch.allclose(got, want):
            return kind
    return None


def framework_defaults(loss_type=None) -> dict:
    """Liger's defaults, read from the signatures of its loss modules at run time."""
    t = _liger()
    g, d = t.GRPOLoss, t.DPOLoss
    lt = loss_type or _default(g, "loss_type")
    beta = _default(g, "beta")
    return {
        "clip_low": _default(g, "epsilon_low"),
        "clip_high": _default(g, "epsilon_high"),
        "dual_clip": _default(g, "delta"),
        "kl_beta": beta,
        "kl_estimator": _probe_kind(t.k3) if beta else None,
        "kl_estimator_if_in_loss": _probe_kind(t.k3),
        "kl_in": "loss" if beta else None,
        "gae_lambda": None,                    # Liger computes no advantages
        "gamma": None,
        "group_size": None,
        "loss_agg": LOSS_TYPE_AGG.get(lt, lt),
        "loss_type": lt,
        "max_completion_length": _default(g, "max_completion_length"),
        "adv_eps": None,
        "dpo_loss_type": _default(d, "loss_type"),
        "dpo_beta": _default(d, "beta"),
        "dpo_label_smoothing": _default(d, "label_smoothing"),
    }


def _cast(x, like):
    return x.to(like.dtype) if x.dtype != like.dtype else x


class _GRPO:
    """What ``LigerFusedLinearGRPOFunction.ppo_loss_fn`` computes with ``loss_type``."""
    loss_type: str | None = None                 # None: Liger's default, read at run time

    def _loss_type(self) -> str:
        return self.loss_type or _default(_liger().GRPOLoss, "loss_type")

    def _loss_type_for(self, agg) -> str:
        mine = self._loss_type()
        if agg in AGG_MODES:
            if LOSS_TYPE_AGG.get(mine) != agg:
                raise Unsupported(f"{self.name} (loss_type={mine!r}) aggregates as "
                                  f"{LOSS_TYPE_AGG.get(mine)!r} only ({_at(GL + ':224-241')})")
            return mine
        return agg                      # not an API.md mode: handed to Liger as loss_type to judge

    def ppo_clip_loss(self, logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None,
                      dual_clip=None, agg="token-mean", norm_len=None):
        loss_type = self._loss_type_for(agg)
        if advantages.dim() != 1:
            raise Unsupported("ppo_loss_fn takes one advantage per sequence, (B,), broadcast as "
                              f"advantages.unsqueeze(1) ({_at(GL + ':199-200')})")
        loss, _metrics = _liger().GRPO.ppo_loss_fn(
            per_token_logps=logp,
            attention_mask=mask,
            advantages=advantages,
            full_attention_mask=mask,             # one chunk = the whole batch
            ref_per_token_logps=None,
            old_per_token_logps=old_logp.float(),  # as _compute_loss_from_logps (shim)
            epsilon_low=clip_low,
            epsilon_high=clip_low if clip_high is None else clip_high,
            beta=0.0,
            loss_type=loss_type,
            max_completion_length=logp.shape[1] if norm_len is None else norm_len,
            delta=dual_clip,
        )
        return _cast(loss, logp)

    def kl_estimate(self, logp, ref_logp, mask=None, kind="k3"):
        if kind != "k3":
            raise Unsupported(f"Liger's GRPO loss has one KL estimator, k3 ({_at(GL + ':10-13, :210')}); "
                              f"kind={kind!r} is not selectable")
        kl = _liger().k3(ref_logp, logp)           # argument order as ppo_loss_fn calls it
        if mask is not None:
            kl = kl * mask                         # as ppo_loss_fn masks the per-token loss (shim)
        return _cast(kl, logp)


class _DPO:
    def dpo_loss(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, beta=0.1, label_smoothing=0.0):
        if label_smoothing != 0.0:
            raise Unsupported("Liger's DPO loss (loss_type='sigmoid') has no label smoothing; "
                              "label_smoothing serves the 'robust' and 'exo_pair' losses "
                              f"({_at(DL + ':60-61, :97-106')})")
        pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
        n = pc.shape[0]
        if any(x.shape != (n,) for x in (pc, pr, rc, rr)):
            raise Unsupported("Liger's DPO loss takes whole pairs, (N,) each; these shapes have none")
        fn = _liger().DPO.preference_loss_fn
        full_target = torch.empty(2, 1)           # one pair: only full_target.shape[0] is read
        out = [fn(pc[i:i + 1], pr[i:i + 1], full_target, ref_chosen_logps=rc[i:i + 1],
                  ref_rejected_logps=rr[i:i + 1], beta=beta, loss_type="sigmoid")[0]
               for i in range(n)]
        return _cast(torch.stack(out), pc)


# --- declarations ---------------------------------------------------------------------------------

_MASK = ("multiplies the per-token values by the mask, (per_token_loss * attention_mask).sum(), so "
         f"NaN or inf at padded positions reaches the result ({_at(GL + ':227, :231, :236, :241')})")
_KL_MASK = ("multiplies the per-token KL by the mask after computing it, so NaN or inf at padded "
            f"positions stays NaN ({_at(GL + ':218, :241, :252')})")

GRPO_DEVIATIONS = {
    "ppo_clip_loss/rejects-dual-clip-at-most-one": (
        "accepts any delta (the dual clip) without validation and clamps the ratio at it "
        f"({_at(GL + ':197-198')})"),
    "ppo_clip_loss/padding-nan": _MASK,
    "ppo_clip_loss/padding-inf": _MASK,
    "kl_estimate/padding-nan": _KL_MASK,
    "kl_estimate/padding-inf": _KL_MASK,
    "kl_estimate/rejects-mixed-float-dtypes": (
        "computes exp(ref - logp) - (ref - logp) - 1 with silent type promotion, no dtype check "
        f"({_at(GL + ':10-13')})"),
}

# declared only where a check reaches the deviation: the dual-clip input check calls token-mean,
# which these loss types cannot honour (Unsupported)
_UNREACHED = {
    "grpo": ("ppo_clip_loss/rejects-dual-clip-at-most-one",),
    "dr_grpo": ("ppo_clip_loss/rejects-dual-clip-at-most-one",),
}

GRPO_SHIMS = {
    "ppo_clip_loss": (
        "old_per_token_logps is cast to float32 (.float()) before ppo_loss_fn, as "
        f"_compute_loss_from_logps does ({_at(PPO + ':531')})"),
    "kl_estimate": (
        "the k3 term is multiplied by the mask, as ppo_loss_fn multiplies the per-token loss that "
        f"contains it by attention_mask ({_at(GL + ':218, :231, :252')})"),
}

DPO_DEVIATIONS = {
    "dpo_loss/rejects-nonpositive-beta": (
        f"accepts beta <= 0 without validation ({_at(DL + ':54-61')})"),
}
DPO_SHIMS = {
    "dpo_loss": ("one call per pair (the loss is sum / n_pairs, a batch mean), with a two-row stub "
                 f"full_target and precomputed reference log-probs ({_at(DL + ':58-61')})"),
}


class LigerGRPO(_GRPO):
    """One ``loss_type`` of Liger's GRPO loss."""
    framework = {"liger-kernel": f"=={LIGER}"}
    shims = GRPO_SHIMS

    def __init__(self, loss_type: str):
        self.loss_type = loss_type
        self.name = f"liger-{loss_type}"
        self.known_deviations = {k: v for k, v in GRPO_DEVIATIONS.items()
                                 if k not in _UNREACHED.get(loss_type, ())}

    def framework_defaults(self) -> dict:
        return framework_defaults(self.loss_type)


class LigerDefault(_GRPO, _DPO):
    """Liger's defaults: GRPO with its default loss_type, and DPO."""
    name = "liger"
    framework = {"liger-kernel": f"=={LIGER}"}
    shims = {**GRPO_SHIMS, **DPO_SHIMS}
    known_deviations = {**GRPO_DEVIATIONS, **DPO_DEVIATIONS}
    framework_defaults = staticmethod(framework_defaults)


class LigerDPO(_DPO):
    name = "liger-dpo"
    framework = {"liger-kernel": f"=={LIGER}"}
    shims = DPO_SHIMS
    known_deviations = DPO_DEVIATIONS
    framework_defaults = staticmethod(framework_defaults)


liger = LigerDefault()
liger_grpo = LigerGRPO("grpo")
liger_dr_grpo = LigerGRPO("dr_grpo")
liger_dapo = LigerGRPO("dapo")
liger_bnpo = LigerGRPO("bnpo")
liger_dpo = LigerDPO()
