"""verl's own implementations, as the benchmark calls them (verl 0.9.1: its math lives in
``verl/trainer/ppo/core_algos.py`` and ``verl/utils/torch_functional.py``).

Each entry calls the function verl's trainer calls, on inputs already in verl's layout (built in
``prepare``, untimed): numeric (float) response masks on the advantage path, bool masks on the loss
path (``response_mask.to(bool)``, verl/workers/utils/losses.py:93), an ``ActorConfig`` made once
with the global-batch information verl's engine fills in (losses.py:65-68), group ids as a numpy
array (the trainer's ``non_tensor_batch["uid"]``), per-sequence scores as ``token_level_rewards``,
and for the KL-in-reward path a ``DataProto``. The knowledge of how verl is called, and the
deviation sentences, come from the adapter (``conformance.adapters.verl``), imported on first use.

Layout of the outcome estimators (``group_normalized_advantages``, ``leave_one_out_advantages``):
the canonical inputs of these functions carry B scores and no response length, so the scores go
in as ``token_level_rewards`` of shape (B, 1) with a (B, 1) response mask of ones, as the adapter
does; verl sums each row (``token_level_rewards.sum(dim=-1)``, core_algos.py:304) and broadcasts
the advantage over the mask at the end, so a trainer's (B, T) layout adds a row sum and a
broadcast over T that is not timed here. The (B, 1) advantage comes back as its column 0.

Variants not timed: ``grpo_vectorized`` (``compute_grpo_vectorized_outcome_advantage``,
core_algos.py:335) and ``rloo_vectorized`` (``compute_rloo_vectorized_outcome_advantage``,
core_algos.py:834) are opt-in estimators (``algorithm.adv_estimator``); the plain ``grpo`` and
``rloo`` names, timed here, select the per-sample Python loops (ray_trainer.py:240, :250).
"""

from __future__ import annotations

import functools
import importlib.util
import math

import torch

from benchmarks.peers import Entry

__all__ = ["FRAMEWORK", "available", "entries", "SKIPPED"]

FRAMEWORK = "verl"
VERSION = "0.9.1"
CA = "verl/trainer/ppo/core_algos.py"
TF = "verl/utils/torch_functional.py"
RT = "verl/trainer/ppo/ray_trainer.py"


def _src(path: str, line) -> str:
    return f"{path}:{line} (verl {VERSION})"


#: function -> why verl is not timed on it; ``entries()`` adds ``kl_penalized_rewards`` here
#: where verl's trainer module (apply_kl_penalty) does not import
SKIPPED: dict[str, str] = {
    "sequence_logprob": "verl has no sequence log-probability function: its PPO code keeps "
        "per-token log-probs and reduces them only inside its losses (agg_loss, "
        + _src(CA, 1140) + ")",
    "bradley_terry_loss": "verl 0.9.1 has no preference or reward-model loss: its trainers are "
        "PPO-family (verl/trainer/ppo/) and SFT (verl/trainer/sft_trainer.py)",
    "dpo_loss": "verl 0.9.1 has no DPO loss: its trainers are PPO-family (verl/trainer/ppo/) and "
        "SFT (verl/trainer/sft_trainer.py)",
    "ipo_loss": "verl 0.9.1 has no IPO loss: its trainers are PPO-family (verl/trainer/ppo/) and "
        "SFT (verl/trainer/sft_trainer.py)",
}

#: why kl_penalized_rewards is skipped where verl's trainer module does not import
_NO_TRAINER = ("verl's KL-in-reward step, apply_kl_penalty (" + _src(RT, 78) + "), lives in the "
               "trainer module, which does not import here (it needs verl's worker dependencies)")


def available() -> bool:
    """verl's core_algos imports in this environment."""
    if importlib.util.find_spec("verl") is None:
        return False
    try:
        _verl()
    except Exception:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _adapter():
    """The adapter module (framework-free to import): verl's imports, KL names, batch info and
    deviation sentences."""
    from conformance.adapters import verl as adapter
    return adapter


def _verl():
    return _adapter()._verl()          # lru-cached: core_algos, torch_functional, configs


@functools.lru_cache(maxsize=None)
def _trainer():
    """verl's trainer module and DataProto (more than the minimal install)."""
    from verl import DataProto
    from verl.trainer.ppo import ray_trainer
    return ray_trainer, DataProto


def _trainer_available() -> bool:
    try:
        _trainer()
    except Exception:
        return False
    return True


# --- helpers ------------------------------------------------------------------------------------

def _numeric(mask, like):
    return mask.to(like.dtype)


def _whiten_every_entry(x, mask, eps=1e-8):
    """masked_whiten's result (torch_functional.py:329-347): mean and unbiased variance over the
    real entries, then ``(x - mean) * rsqrt(var + eps)`` on *every* entry, padded ones included.
    (masked_mean divides by ``n + 1e-8``, torch_functional.py:308: a relative 1e-8 / n, ignored.)"""
    m = mask.to(torch.bool)
    real = x[m]
    mean = real.mean()
    var = real.var(unbiased=True)
    return (x - mean) * torch.rsqrt(var + eps)


def _scores_in(scores):
    """(B,) scores -> verl's token_level_rewards (B, 1) and a (B, 1) response mask of ones."""
    rewards = scores.unsqueeze(-1)
    return rewards, torch.ones_like(rewards)


# --- returns and advantages ---------------------------------------------------------------------

def _gae_prepare(kw):
    ca = _verl().ca
    rewards, values = kw["rewards"], kw["values"]
    mask = _numeric(kw["mask"], rewards)
    gamma, lam = kw["gamma"], kw["lam"]
    # ray_trainer.compute_advantage's call (ray_trainer.py:220)
    return lambda: ca.compute_gae_advantage_return(
        token_level_rewards=rewards, values=values, response_mask=mask, gamma=gamma, lam=lam)


def _gae_expected(kw):
    import refimpl
    A, _ = refimpl.gae(kw["rewards"], kw["values"], kw["mask"], gamma=kw["gamma"], lam=kw["lam"])
    # verl's raw advantages are 0 at padding (lastgaelam carried through the padded tail) and its
    # returns are advantages + values, values unmasked (core_algos.py:251-261)
    return _whiten_every_entry(A, kw["mask"]), A + kw["values"]


_GAE_DEVIATION = (
    "compute_gae_advantage_return whitens the advantages over the batch with masked_whiten before "
    "returning them (" + _src(CA, 262) + "), padded entries included ((0 - mean) * rsqrt(var + "
    "1e-8) there, " + _src(TF, 343) + "), and its returns are advantages + values with the values "
    "unmasked, so padded returns are the padded values (" + _src(CA, 261) + "); expected: "
    "refimpl.gae's advantages whitened so on every entry, and refimpl.gae's advantages + values")


def _returns_prepare(kw):
    v = _verl()
    rewards = kw["rewards"]
    mask = _numeric(kw["mask"], rewards)
    config = v.AlgoConfig(gamma=kw["gamma"])     # verl reads config.gamma only (core_algos.py:715)
    return lambda: v.ca.compute_reinforce_plus_plus_outcome_advantage(
        token_level_rewards=rewards, response_mask=mask, config=config)


def _group_prepare(kw):
    ca = _verl().ca
    rewards, ones = _scores_in(kw["scores"])
    index = kw["group_ids"].cpu().numpy()
    eps = kw["eps"]
    by_std = {"group": True, "none": False}[kw["scale"]]   # norm_adv_by_std_in_grpo
    return lambda: ca.compute_grpo_outcome_advantage(
        token_level_rewards=rewards, response_mask=ones, index=index, epsilon=eps,
        norm_adv_by_std_in_grpo=by_std)


def _rloo_prepare(kw):
    v = _verl()
    rewards, ones = _scores_in(kw["scores"])
    index = kw["group_ids"].cpu().numpy()
    config = v.AlgoConfig(adv_estimator="rloo")
    return lambda: v.ca.compute_rloo_outcome_advantage(
        token_level_rewards=rewards, response_mask=ones, index=index, config=config)


def _column0(out, kw):
    return out[0][:, 0]


def _whiten_prepare(kw):
    F = _verl().F
    advantages = kw["advantages"]
    mask = _numeric(kw["mask"], advantages)
    return lambda: F.masked_whiten(advantages, mask)


def _whiten_expected(kw):
    if kw["eps"] != 1e-8:
        raise ValueError("masked_whiten's eps is a fixed 1e-8 (torch_functional.py:343)")
    return _whiten_every_entry(kw["advantages"], kw["mask"], kw["eps"])


_WHITEN_DEVIATION = (
    "masked_whiten whitens every entry, padded ones included, so padded outputs are "
    "(x - mean) * rsqrt(var + 1e-8), not 0 (" + _src(TF, 343) + "); expected: refimpl's whitening "
    "(mean and unbiased variance over the real entries, eps inside the rsqrt) applied to every entry")


# --- KL -----------------------------------------------------------------------------------------

def _kl_prepare(kw):
    ca = _verl().ca
    logp, ref_logp = kw["logp"], kw["ref_logp"]
    mask = _numeric(kw["mask"], logp)
    name = _adapter().KL_NAMES[kw["kind"]]                  # k3 -> 'low_var_kl'
    # kl_penalty computes every entry; with a mask, verl's trainer masks on the next line,
    # kld * response_mask (ray_trainer.py:103), as refimpl masks inside kl_estimate: timed with
    # it, so that the output and the gradient at padded entries are 0 on both sides (the actor's
    # KL loss instead hands the unmasked estimate to agg_loss, losses.py:135-138)
    return lambda: ca.kl_penalty(logp, ref_logp, kl_penalty=name) * mask


def _kl_rewards_prepare(kw):
    ray_trainer, DataProto = _trainer()
    ca = _verl().ca
    logp, ref_logp, scores = kw["logp"], kw["ref_logp"], kw["scores"]
    mask = _numeric(kw["mask"], logp)
    # the reward manager's token_level_scores: the score at each row's last real token
    # (verl/workers/reward_manager/naive.py:153)
    last = kw["mask"].sum(dim=1) - 1
    token_level_scores = torch.zeros_like(logp)
    token_level_scores[torch.arange(logp.shape[0], device=logp.device), last] = scores
    data = DataProto.from_dict(tensors={
        "response_mask": mask, "token_level_scores": token_level_scores,
        "old_log_probs": logp, "ref_log_prob": ref_logp})
    kl_ctrl = ca.FixedKLController(kl_coef=kw["beta"])      # algorithm.kl_ctrl.type = 'fixed'
    name = _adapter().KL_NAMES[kw["kind"]]                  # k1 -> 'kl'
    return lambda: ray_trainer.apply_kl_penalty(data, kl_ctrl, kl_penalty=name)


def _kl_rewards_canonical(out, kw):
    data, _metrics = out
    return data.batch["token_level_rewards"]


# --- losses -------------------------------------------------------------------------------------

def _aggregate_prepare(kw):
    ca = _verl().ca
    values = kw["values"]
    mask = kw["mask"].to(bool)
    info = _adapter()._batch_info(kw["mask"], kw.get("norm_len"))
    mode = kw["mode"]
    return lambda: ca.agg_loss(loss_mat=values, loss_mask=mask, loss_agg_mode=mode, **info)


def _actor_config(kw, agg, **clip):
    v = _verl()
    config = v.ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                           loss_agg_mode=agg, loss_scale_factor=kw.get("norm_len"), **clip)
    # what the engine hands the loss for one mini-batch on one rank (losses.py:65-68)
    config.global_batch_info.update(_adapter()._batch_info(kw["mask"], config.loss_scale_factor))
    return config


def _policy_loss_prepare(loss_mode, kw, config, old_logp):
    fn = _verl().ca.get_policy_loss_fn(loss_mode)
    logp, advantages = kw["logp"], kw["advantages"]
    mask = kw["mask"].to(bool)
    agg = config.loss_agg_mode
    # verl/workers/utils/losses.py:101-112
    return lambda: fn(old_log_prob=old_logp, log_prob=logp, advantages=advantages,
                      response_mask=mask, loss_agg_mode=agg, config=config,
                      rollout_is_weights=None)


def _pg_prepare(kw):
    config = _actor_config(kw, kw["agg"])
    # 'gpg' ignores old_log_prob; the trainer hands it the rollout's, here logp detached
    return _policy_loss_prepare("gpg", kw, config, kw["logp"].detach())


def _ppo_prepare(kw):
    clip_low = kw["clip_low"]
    clip_high = kw.get("clip_high")
    dual_clip = kw.get("dual_clip")
    # dual_clip=None -> clip_ratio_c=inf: the 'vanilla' loss always applies the dual clip
    # (core_algos.py:1355; at these inputs verl's default 3.0 never binds either: |ratio| <= e^0.4)
    config = _actor_config(kw, kw["agg"], clip_ratio=clip_low, clip_ratio_low=clip_low,
                           clip_ratio_high=clip_low if clip_high is None else clip_high,
                           clip_ratio_c=math.inf if dual_clip is None else dual_clip)
    loss_mode = config.policy_loss.get("loss_mode", "vanilla")     # losses.py:101
    return _policy_loss_prepare(loss_mode, kw, config, kw["old_logp"])


def _value_prepare(kw):
    ca = _verl().ca
    values, old_values, returns = kw["values"], kw["old_values"], kw["returns"]
    mask = kw["mask"].to(bool)
    clip = math.inf if kw.get("clip") is None else kw["clip"]   # verl always clips (:2171)
    info = _adapter()._batch_info(kw["mask"], kw.get("norm_len"))
    agg = kw["agg"]
    # verl/workers/utils/losses.py:186-197 (the critic's loss_agg_mode follows the actor's)
    return lambda: ca.compute_value_loss(vpreds=values, returns=returns, values=old_values,
                                         response_mask=mask, cliprange_value=clip,
                                         loss_agg_mode=agg, **info)


def _first(out, kw):
    return out[0]


# --- log-probabilities --------------------------------------------------------------------------

def _token_logprobs_prepare(kw):
    F = _verl().F
    logits, tokens = kw["logits"], kw["tokens"]
    return lambda: F.logprobs_from_logits(logits, tokens)


# --- the entries --------------------------------------------------------------------------------

def entries() -> dict[str, Entry]:
    out = {
        "gae": Entry(
            prepare=_gae_prepare, expected=_gae_expected, deviation=_GAE_DEVIATION, grad=False,
            source=_src(CA, 216) + ", compute_gae_advantage_return (under torch.no_grad, :244)"),
        "discounted_returns": Entry(
            prepare=_returns_prepare, canonical=lambda out, kw: out[1], grad=False,
            source=_src(CA, 694) + ", compute_reinforce_plus_plus_outcome_advantage: its second "
                   "output, the returns (the timed call also whitens them into its advantages, "
                   ":728; under torch.no_grad, :716)"),
        "group_normalized_advantages": Entry(
            prepare=_group_prepare, canonical=_column0, grad=False,
            source=_src(CA, 268) + ", compute_grpo_outcome_advantage (adv_estimator 'grpo'; "
                   "'grpo_vectorized', compute_grpo_vectorized_outcome_advantage at :335, is "
                   "opt-in)"),
        "leave_one_out_advantages": Entry(
            prepare=_rloo_prepare, canonical=_column0, grad=False,
            source=_src(CA, 588) + ", compute_rloo_outcome_advantage (adv_estimator 'rloo'; "
                   "'rloo_vectorized', compute_rloo_vectorized_outcome_advantage at :834, is "
                   "opt-in)"),
        "batch_normalized_advantages": Entry(
            prepare=_whiten_prepare, expected=_whiten_expected, deviation=_WHITEN_DEVIATION,
            # called inside the no_grad blocks of the advantage estimators (core_algos.py:262, :728)
            grad=False, source=_src(TF, 329) + ", masked_whiten"),
        "kl_estimate": Entry(
            prepare=_kl_prepare,
            source=_src(CA, 2188) + ", kl_penalty ('low_var_kl' for k3, kl_penalty_forward at "
                   ":2216), times the response mask as the trainer does next "
                   "(" + _src(RT, 103) + ")"),
        "aggregate": Entry(prepare=_aggregate_prepare, source=_src(CA, 1140) + ", agg_loss"),
        "policy_gradient_loss": Entry(
            prepare=_pg_prepare, canonical=_first,
            source=_src(CA, 1708) + ", compute_policy_loss_gpg (the registered policy loss 'gpg')"),
        "ppo_clip_loss": Entry(
            prepare=_ppo_prepare, canonical=_first,
            source=_src(CA, 1286) + ", compute_policy_loss_vanilla (the registered policy loss "
                   "'vanilla', ActorConfig.policy_loss.loss_mode's default)"),
        "value_loss": Entry(
            prepare=_value_prepare, canonical=_first,
            source=_src(CA, 2125) + ", compute_value_loss"),
        "token_logprobs": Entry(
            prepare=_token_logprobs_prepare,
            source=_src(TF, 73) + ", logprobs_from_logits (without flash-attn: "
                   "logprobs_from_logits_v2, :173)"),
    }
    if _trainer_available():
        out["kl_penalized_rewards"] = Entry(
            prepare=_kl_rewards_prepare, canonical=_kl_rewards_canonical,
            # the KL in the reward is taken on the rollout's old_log_probs, computed without a
            # graph, and feeds the advantage estimator (ray_trainer.py:100-106)
            grad=False,
            source=_src(RT, 78) + ", apply_kl_penalty on a DataProto with a FixedKLController "
                   "(kl_penalty 'kl' for k1, " + _src(CA, 2188) + ")")
        SKIPPED.pop("kl_penalized_rewards", None)
    else:
        SKIPPED["kl_penalized_rewards"] = _NO_TRAINER
    return out
