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
  ``dual_clip`` is Liger's ``delta`` (INTELLECT-2 two-sided clipping: the ratio of every token is
  clamped at delta, which equals the dual-clip floor -c A whenever c > 1 + clip_high; for
  1 < c <= 1 + clip_high it does not, a declared deviation); ``norm_len`` is
  ``max_completion_length`` (``dr_grpo``; the padded width T when None).
- ``advantages`` must be ``(B,)``: ``ppo_loss_fn`` broadcasts ``advantages.unsqueeze(1)`` over tokens
  (grpo_loss.py:199-200) and has no per-token advantages; ``(B, T)`` is ``Unsupported``.
- ``dpo_loss``: the function returns the batch mean (``sum / n_pairs`` with ``n_pairs =
  full_target.shape[0] // 2``, dpo_loss.py:58-61): one call per pair, with a stub ``full_target`` of
  two rows (only its first dimension is read).
- Outputs come back uncast, in the dtype Liger produces.
- ``kl_estimate`` is ``k3_loss_fn`` alone: it takes no mask, and ``ppo_loss_fn`` does not mask the
  KL right after the call (it adds ``beta * kl`` to the per-token loss and masks the sum inside its
  aggregation, grpo_loss.py:218-241), so ``mask`` is unused and padded entries hold the estimate of
  whatever stands there.

Shim (a step Liger's own code does right before the call): ``old_per_token_logps`` is cast to
float32 (``.float()``), as ``_compute_loss_from_logps`` does (fused_linear_ppo.py:531).

Variants: GRPO's ``loss_type`` selects the aggregation. ``liger`` is Liger's defaults
(``LigerFusedLinearGRPOLoss(loss_type=...)`` read at run time, "dapo" in 0.8.5, plus DPO);
``liger-grpo`` (seq-mean-token-mean), ``liger-dr_grpo`` (seq-mean-token-sum-norm), ``liger-dapo``
and ``liger-bnpo`` (token-mean) carry the GRPO functions; ``liger-dpo`` carries DPO. Each declares
its own aggregation in ``capabilities`` (a direct call in another mode is ``Unsupported``). Not
mapped: the loss
types cispo, sapo, vespo and luspo (not the contract's clipped objective); DPO ``loss_type="ipo"``
raises NotImplementedError in 0.8.5 (dpo_loss.py:68-72), so there is no ``ipo_loss``; ORPO, SimPO,
CPO and KTO have no reference model in their losses and match no function of the contract. Liger computes
no advantages, returns, GAE or log-probabilities as pure CPU functions.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch

from conformance import Unsupported
from conformance.adapters import pins, support
from conformance.contract import AGG_MODES

LIGER = pins.PINS["liger"]
GL = "liger_kernel/chunked_loss/grpo_loss.py"
PPO = "liger_kernel/chunked_loss/fused_linear_ppo.py"
DL = "liger_kernel/chunked_loss/dpo_loss.py"
# loss_type -> the contract's aggregation it performs (grpo_loss.py:224-241)
LOSS_TYPE_AGG = {"grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm",
                 "dapo": "token-mean", "bnpo": "token-mean"}
#: LigerFusedLinearGRPOLoss(loss_type=...)'s default in the pinned Liger (the plain variant's
#: capabilities; tests/test_adapter_liger.py checks it against the installed Liger)
DEFAULT_LOSS_TYPE = "dapo"
_at = support.citer("liger")


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


_default = support.param_default


def _kl_kind() -> str | None:
    """Which contract estimator Liger's KL term computes (called as ppo_loss_fn calls it:
    ``k3_loss_fn(ref, logp)``, grpo_loss.py:210)."""
    return support.kl_kind_of(lambda logp, ref: _liger().k3(ref, logp))


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
        "kl_estimator": _kl_kind() if beta else None,
        "kl_estimator_if_in_loss": _kl_kind(),
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


class _GRPO:
    """What ``LigerFusedLinearGRPOFunction.ppo_loss_fn`` computes with ``loss_type``."""
    loss_type: str | None = None                 # None: Liger's default, read at run time

    def _loss_type(self) -> str:
        return self.loss_type or _default(_liger().GRPOLoss, "loss_type")

    def _loss_type_for(self, agg) -> str:
        """The loss_type that performs ``agg``: this variant's (``Unsupported`` for a contract mode
        it does not perform); a string that is no contract mode is handed to Liger as loss_type,
        which judges it."""
        support.honour(self, "agg", agg, "ppo_clip_loss", why=_at(GL, "224-241"))
        return self._loss_type() if agg in AGG_MODES else agg

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
        return loss

    def kl_estimate(self, logp, ref_logp, mask=None, kind="k3"):
        support.translate(self, "kl_kind", kind, {"k3": None}, "kl_estimate",
                          why=f"the GRPO loss has one KL estimator, k3 ({_at(GL, '10-13, :210')})")
        # argument order as ppo_loss_fn calls it; no mask: ppo_loss_fn masks only the sum it
        # adds the KL into, inside its aggregation (grpo_loss.py:218-241), not right after the call
        return _liger().k3(ref_logp, logp)


class _DPO:
    def dpo_loss(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, beta=0.1, label_smoothing=0.0):
        support.honour(self, "label_smoothing", label_smoothing, "dpo_loss", default=0.0,
                       why="the 'sigmoid' loss has no label smoothing; label_smoothing serves the "
                           f"'robust' and 'exo_pair' losses ({_at(DL, '60-61, :97-106')})")
        pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
        n = pc.shape[0]
        if any(x.shape != (n,) for x in (pc, pr, rc, rr)):
            raise Unsupported("Liger's DPO loss takes whole pairs, (N,) each; these shapes have none")
        fn = _liger().DPO.preference_loss_fn
        full_target = torch.empty(2, 1)           # one pair: only full_target.shape[0] is read
        return support.per_pair(
            lambda i: fn(pc[i:i + 1], pr[i:i + 1], full_target, ref_chosen_logps=rc[i:i + 1],
                         ref_rejected_logps=rr[i:i + 1], beta=beta, loss_type="sigmoid")[0], n)


# --- declarations ---------------------------------------------------------------------------------

_MASK = support.masks_by_multiplication(_at(GL, "227, :231, :236, :241"),
                                        code="(per_token_loss * attention_mask).sum()")
_KL_NO_MASK = ("k3_loss_fn takes no mask and computes every entry, so padded entries hold the "
               "estimate of whatever stands there, not 0, and NaN/inf padding reaches the output "
               f"({_at(GL + ':10-13')})")

#: the example in _DELTA, re-run by tests/test_adapter_liger.py
_DELTA = ("delta (the contract's dual_clip c) clamps the ratio at c on every token, whatever the sign "
          "of A, before the min with the clipped term, which is the dual-clip floor -c A only when "
          "c > 1 + epsilon_high: with c = 1.1 and epsilon_high = 0.28 a token with r = 1.26 and "
          "A = +1 gets loss -1.1 and no gradient instead of -1.26 with gradient -1.26, and one with "
          "r = 1.26 and A = -1 gets loss 1.26 with gradient 1.26 instead of 1.1 with none "
          f"({_at(GL + ':196-201')})")
#: the example in _OLD_FLOAT32, re-run by tests/test_adapter_liger.py
_OLD_FLOAT32 = ("casts old_per_token_logps to float32 (.float()) before ppo_loss_fn, so with float64 "
                "inputs the ratio is taken against old log-probs rounded to float32: with logp = -1.0, "
                "an old log-prob of -1.1 (float32: -1.10000002) and A = 1 the loss differs from the "
                f"contract's by 2.4e-8 relative ({_at(PPO + ':531')})")

GRPO_DEVIATIONS = {
    "ppo_clip_loss/matches-reference": _OLD_FLOAT32,
    "ppo_clip_loss/gradient-matches-reference": _OLD_FLOAT32,
    "ppo_clip_loss/gradient-equals-policy-gradient-at-old-policy": _OLD_FLOAT32,
    "ppo_clip_loss/dual-clip-inside-clip-range": _DELTA,
    "ppo_clip_loss/rejects-dual-clip-at-most-one": support.no_validation(
        "delta (the dual clip)", _at(GL, "197-198"), "the ratio is clamped at any value given"),
    "ppo_clip_loss/padding-nan": _MASK,
    "ppo_clip_loss/padding-inf": _MASK,
    "kl_estimate/padding-*": _KL_NO_MASK,
    "kl_estimate/matches-reference": _KL_NO_MASK,
    "kl_estimate/gradient-matches-reference": (
        "k3_loss_fn takes no mask: the gradient at padded entries is not 0 "
        f"({_at(GL + ':10-13')})"),
    "kl_estimate/rejects-mixed-float-dtypes": support.type_promotion(_at(GL, "10-13")),
}

GRPO_SHIMS = {
    "ppo_clip_loss": (
        "old_per_token_logps is cast to float32 (.float()) before ppo_loss_fn, as "
        f"_compute_loss_from_logps does ({_at(PPO + ':531')})"),
}

DPO_DEVIATIONS = {
    "dpo_loss/rejects-nonpositive-beta": support.no_validation(
        "beta", _at(DL, "54-61"), "beta <= 0 is used as given"),
}
_ONE_PAIR = ("one pair per call with a two-row stub full_target: Liger divides the chunk's summed loss "
             "by n_pairs = full_target.shape[0] // 2 (1 here), so whether that divisor is the batch's "
             f"pair count in the fused forward cannot show, only each pair's own loss ({_at(DL + ':58-61')})")
#: passes that hold only because the adapter shapes the input so that Liger's behaviour cannot show
DPO_QUALIFIED = support.qualify(_ONE_PAIR, "dpo_loss", *support.PREFERENCE_VALUE_CHECKS["dpo_loss"])
DPO_SHIMS = {
    "dpo_loss": ("one call per pair (the loss is sum / n_pairs, a batch mean), with a two-row stub "
                 f"full_target and precomputed reference log-probs ({_at(DL + ':58-61')})"),
}


def _grpo_capabilities(loss_type: str) -> dict:
    """What ppo_loss_fn with ``loss_type`` honours: that loss_type's aggregation and the k3 KL
    of its loss (grpo_loss.py:10-13, :210)."""
    return {"agg": [LOSS_TYPE_AGG[loss_type]], "kl_kind": ["k3"]}


DPO_CAPABILITIES = {"label_smoothing": False}        # loss_type "sigmoid" (dpo_loss.py:60-61)
FRAMEWORK = pins.framework("liger")


class LigerGRPO(_GRPO):
    """One ``loss_type`` of Liger's GRPO loss."""
    framework = FRAMEWORK
    shims = GRPO_SHIMS
    known_deviations = GRPO_DEVIATIONS

    def __init__(self, loss_type: str):
        self.loss_type = loss_type
        self.name = f"liger-{loss_type}"
        self.capabilities = _grpo_capabilities(loss_type)

    def framework_defaults(self) -> dict:
        return framework_defaults(self.loss_type)


class LigerDefault(_GRPO, _DPO):
    """Liger's defaults: GRPO with its default loss_type, and DPO."""
    name = "liger"
    framework = FRAMEWORK
    capabilities = {**_grpo_capabilities(DEFAULT_LOSS_TYPE), **DPO_CAPABILITIES}
    shims = {**GRPO_SHIMS, **DPO_SHIMS}
    known_deviations = {**GRPO_DEVIATIONS, **DPO_DEVIATIONS}
    qualified = DPO_QUALIFIED
    framework_defaults = staticmethod(framework_defaults)


class LigerDPO(_DPO):
    name = "liger-dpo"
    framework = FRAMEWORK
    capabilities = DPO_CAPABILITIES
    shims = DPO_SHIMS
    known_deviations = DPO_DEVIATIONS
    qualified = DPO_QUALIFIED
    framework_defaults = staticmethod(framework_defaults)


liger = LigerDefault()
liger_grpo = LigerGRPO("grpo")
liger_dr_grpo = LigerGRPO("dr_grpo")
liger_dapo = LigerGRPO("dapo")
liger_bnpo = LigerGRPO("bnpo")
liger_dpo = LigerDPO()
