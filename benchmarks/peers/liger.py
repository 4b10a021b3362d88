"""Liger Kernel's own implementations, as the benchmark calls them (liger-kernel 0.8.5).

Liger's RL and preference losses are fused "lm-head + loss" autograd functions that run the batch
in chunks of rows; the loss arithmetic of a chunk is a pure tensor function, which is what is
timed here (as the conformance adapter calls it, ``conformance/adapters/liger.py``); the Triton
ops under ``liger_kernel/ops/`` need a GPU and have no CPU path:

- ``ppo_clip_loss``: ``LigerFusedLinearGRPOFunction.ppo_loss_fn`` at ``loss_type="dapo"``
  (token-mean), ``beta=0``, the whole batch as one chunk (``attention_mask`` and
  ``full_attention_mask`` are both the mask, as ``forward`` passes its whole mask,
  fused_linear_ppo.py:263), advantages as Liger's ``(B,)`` (column 0 of the case's per-token
  layout), the mask as int64 (TRL's ``completion_mask``, what Liger's GRPO loss is handed), the
  old log-probs cast to float32 as ``_compute_loss_from_logps`` does (fused_linear_ppo.py:531).
- ``kl_estimate``: ``k3_loss_fn(ref, logp)``, the KL term of that loss, as ``ppo_loss_fn``
  calls it (grpo_loss.py:210); it takes no mask.
- ``dpo_loss``: ``LigerFusedLinearDPOFunction.preference_loss_fn`` on the N pairs at once, with
  ``loss_type="sigmoid"`` and a stub ``full_target`` of 2N rows (only its first dimension is read:
  ``n_pairs = full_target.shape[0] // 2``, dpo_loss.py:58).

Everything but the call is made in ``prepare``, untimed.
"""

from __future__ import annotations

import importlib.util

import torch

from benchmarks.peers import Entry

FRAMEWORK = "liger"
VERSION = "0.8.5"           # the wheel the line numbers below are read from (pins.PINS["liger"])

GL = "liger_kernel/chunked_loss/grpo_loss.py"
PPO = "liger_kernel/chunked_loss/fused_linear_ppo.py"
DL = "liger_kernel/chunked_loss/dpo_loss.py"
PREF = "liger_kernel/chunked_loss/fused_linear_preference.py"
OPS = "liger_kernel/ops/grpo_loss.py"


def _at(where: str) -> str:
    return f"{where} (liger-kernel {VERSION})"


def available() -> bool:
    """Liger's chunked losses import here."""
    if importlib.util.find_spec("liger_kernel") is None:
        return False
    try:
        from liger_kernel.chunked_loss.dpo_loss import LigerFusedLinearDPOFunction  # noqa: F401
        from liger_kernel.chunked_loss.grpo_loss import (  # noqa: F401
            LigerFusedLinearGRPOFunction,
            k3_loss_fn,
        )
    except Exception:                                     # noqa: BLE001
        return False
    return True


def _ppo_prepare(kw: dict):
    from liger_kernel.chunked_loss.grpo_loss import LigerFusedLinearGRPOFunction
    fn = LigerFusedLinearGRPOFunction.ppo_loss_fn
    logp = kw["logp"]
    mask = kw["mask"].to(torch.long)
    advantages = kw["advantages"][:, 0].detach().contiguous()          # Liger's (B,)
    old_logp = kw["old_logp"].detach().float()                         # fused_linear_ppo.py:531
    clip = kw.get("clip_low", 0.2)
    clip_high = clip if kw.get("clip_high") is None else kw["clip_high"]
    T = logp.shape[1]
    return lambda: fn(per_token_logps=logp, attention_mask=mask, advantages=advantages,
                      full_attention_mask=mask, ref_per_token_logps=None,
                      old_per_token_logps=old_logp, epsilon_low=clip, epsilon_high=clip_high,
                      beta=0.0, loss_type="dapo", max_completion_length=T, delta=None)


def _k3_prepare(kw: dict):
    from liger_kernel.chunked_loss.grpo_loss import k3_loss_fn
    logp, ref = kw["logp"], kw["ref_logp"].detach()
    return lambda: k3_loss_fn(ref, logp)                  # argument order as grpo_loss.py:210


def _k3_expected(kw: dict):
    import refimpl
    return refimpl.kl_estimate(kw["logp"], kw["ref_logp"], mask=None, kind=kw.get("kind", "k3"))


def _dpo_prepare(kw: dict):
    from liger_kernel.chunked_loss.dpo_loss import LigerFusedLinearDPOFunction
    fn = LigerFusedLinearDPOFunction.preference_loss_fn
    pc, pr = kw["policy_chosen_logps"], kw["policy_rejected_logps"]
    rc, rr = kw["ref_chosen_logps"].detach(), kw["ref_rejected_logps"].detach()
    beta = kw["beta"]
    full_target = torch.empty(2 * pc.shape[0], 1, dtype=torch.long, device=pc.device)
    return lambda: fn(pc, pr, full_target, ref_chosen_logps=rc, ref_rejected_logps=rr, beta=beta,
                      loss_type="sigmoid")


def _dpo_expected(kw: dict):
    import refimpl
    return refimpl.dpo_loss(**kw).mean()


def _first(out, kw):
    return out[0]


def entries() -> dict[str, Entry]:
    return {
        "ppo_clip_loss": Entry(
            prepare=_ppo_prepare,
            canonical=_first,
            source=_at(f"{GL}:101 (LigerFusedLinearGRPOFunction.ppo_loss_fn; clipped objective "
                       f":196-201, dapo token-mean :237-241)")),
        "kl_estimate": Entry(
            prepare=_k3_prepare,
            expected=_k3_expected,
            deviation=(f"k3_loss_fn takes no mask and computes every entry ({GL}:10-13), so padded "
                       "positions hold the estimate of whatever stands there, not 0: expected is "
                       "refimpl's kl_estimate with mask=None"),
            source=_at(f"{GL}:10 (k3_loss_fn)")),
        "dpo_loss": Entry(
            prepare=_dpo_prepare,
            canonical=_first,
            expected=_dpo_expected,
            deviation=(f"returns the batch mean of the per-pair losses (-logsigmoid(...).sum() / "
                       f"n_pairs, {DL}:58-61), not the (N,) losses: expected is refimpl's losses "
                       "averaged"),
            source=_at(f"{DL}:9 (LigerFusedLinearDPOFunction.preference_loss_fn, loss_type "
                       f"'sigmoid' :60-61)")),
    }


_NO_ADV = ("Liger computes no returns, advantages or rewards: liger_kernel/chunked_loss/ holds "
           "losses only")

SKIPPED: dict[str, str] = {
    "discounted_returns": _NO_ADV,
    "gae": _NO_ADV,
    "kl_penalized_rewards": _NO_ADV,
    "group_normalized_advantages": _NO_ADV,
    "leave_one_out_advantages": _NO_ADV,
    "batch_normalized_advantages": _NO_ADV,
    "value_loss": "Liger has no value (critic) loss",
    "policy_gradient_loss": (f"no REINFORCE loss: ppo_loss_fn without old_per_token_logps "
                             f"({GL}:139) is the clipped ratio loss at ratio 1 (value -A, not "
                             "-A logp), the ppo_clip_loss code path; the conformance adapter does "
                             "not map it"),
    "aggregate": (f"the loss_type normalisation is inline at the end of ppo_loss_fn "
                  f"({GL}:224-247): reachable only through the whole GRPO loss, whose cost is not "
                  "the aggregation's"),
    "bradley_terry_loss": ("no reward-model loss in liger_kernel/chunked_loss/ (its ORPO, SimPO, "
                           "CPO and KTO losses score the policy's own log-probs, not a reward "
                           "model's (chosen, rejected) rewards)"),
    "ipo_loss": (f"preference_loss_fn with loss_type='ipo' raises NotImplementedError in "
                 f"{VERSION} ({DL}:68-72)"),
    "token_logprobs": (f"the CPU path computes log-probs only fused with the lm-head matmul from "
                       f"hidden states (chunk_forward, {PREF}:319-354); the logits-level "
                       f"fused_selective_log_softmax ({OPS}:71) is a Triton kernel without "
                       "autograd that reads L+1 logit positions"),
    "sequence_logprob": (f"the masked token sum is inline in chunk_forward ({PREF}:351-354), after "
                         "the fused lm-head matmul and log-softmax; no separable function"),
}
