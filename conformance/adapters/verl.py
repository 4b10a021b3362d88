"""Adapters for verl 0.9.1 (``rlconform setup verl``: ``pip install --no-deps verl==0.9.1``, then
numpy, packaging, ray, tensordict 0.10.0, omegaconf, codetiming, orjson and
transformers>=5.5.3,<5.11; ``verl_install.sh``).

Each canonical function calls verl's own code the way verl's trainer calls it:

| canonical                     | verl                                                        |
|-------------------------------|-------------------------------------------------------------|
| `gae`                         | `core_algos.compute_gae_advantage_return`                   |
| `discounted_returns`          | the returns of `compute_reinforce_plus_plus_outcome_advantage` |
| `group_normalized_advantages` | `compute_grpo_outcome_advantage` (`norm_adv_by_std_in_grpo`)|
| `leave_one_out_advantages`    | `compute_rloo_outcome_advantage`                            |
| `batch_normalized_advantages` | `verl.utils.torch_functional.masked_whiten`                 |
| `kl_estimate`                 | `core_algos.kl_penalty` ('kl', 'mse', 'low_var_kl')         |
| `aggregate`                   | `core_algos.agg_loss`                                       |
| `policy_gradient_loss`        | the registered policy loss 'gpg'                            |
| `ppo_clip_loss`               | the registered policy loss 'vanilla' with an `ActorConfig`  |
| `value_loss`                  | `core_algos.compute_value_loss`                             |
| `token_logprobs`              | `verl.utils.torch_functional.logprobs_from_logits`          |

Calling conventions (translations only, no values changed):
- Masks: the loss path hands verl a bool mask (``response_mask.to(bool)``,
  verl/workers/utils/losses.py:93); the advantage path a numeric response mask (it computes
  ``1 - response_mask``), here in the data's float dtype.
- Per-sequence scores go in as ``token_level_rewards`` of shape (B, 1) with a mask of ones (verl
  sums each row: ``token_level_rewards.sum(dim=-1)``); the (B, 1) advantages come back as (B,).
  Group ids go in as a numpy array (``index=``, the trainer's ``non_tensor_batch["uid"]``).
- Losses get the global-batch information verl's engine hands ``agg_loss`` for one mini-batch on
  one rank (verl/workers/utils/losses.py:65-68): ``dp_size=1``, ``batch_num_tokens`` = the real
  tokens of the batch, ``global_batch_size`` = B, ``loss_scale_factor`` = ``norm_len``.
- (B,) advantages are broadcast over tokens (verl takes (B, T)).
- ``dual_clip=None`` is ``clip_ratio_c=inf`` and value ``clip=None`` is ``cliprange_value=inf``:
  verl always applies both clips, an infinite bound is its setting for "no clip".

Variants: verl's ``loss_agg_mode`` (``actor.loss_agg_mode``; the critic follows it) selects the
aggregation. ``verl`` is the default (``ActorConfig.loss_agg_mode``, read at run time:
token-mean); ``verl-seq-mean-token-sum``, ``verl-seq-mean-token-mean`` and
``verl-seq-mean-token-sum-norm`` each honour only their own mode and raise ``Unsupported`` for the
other API.md modes (an unknown mode string is handed to verl, which judges it). Options verl has
no setting for raise ``Unsupported`` too: GRPO's ``scale='batch'``, a whitening ``eps`` other
than masked_whiten's fixed 1e-8.

Not provided: ``kl_penalized_rewards`` (verl's ``apply_kl_penalty`` works on a ``DataProto`` in
ray_trainer.py, whose import needs more than this minimal install), ``sequence_logprob`` and the
preference losses (no such functions in verl's PPO code).
"""

from __future__ import annotations

import functools
import math

from conformance import Unsupported

VERL = "0.9.1"
CA = "verl/trainer/ppo/core_algos.py"
TF = "verl/utils/torch_functional.py"
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_NAMES = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}     # verl's kl_penalty names
KL_KINDS = {"kl": "k1", "k1": "k1", "mse": "k2", "k2": "k2", "low_var_kl": "k3", "k3": "k3"}


def _at(where: str) -> str:
    return f"{where}, verl {VERL}"


@functools.lru_cache(maxsize=None)
def _verl():
    """Import verl once, on first use (the module loads without verl installed)."""
    from types import SimpleNamespace

    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo import core_algos
    from verl.utils import torch_functional
    from verl.workers.config import ActorConfig, CriticConfig, RolloutConfig
    return SimpleNamespace(ca=core_algos, F=torch_functional, ActorConfig=ActorConfig,
                           CriticConfig=CriticConfig, RolloutConfig=RolloutConfig,
                           AlgoConfig=AlgoConfig)


def _field_default(cls, name):
    import dataclasses
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(name)


def framework_defaults() -> dict:
    """verl's defaults, read from its config dataclasses and signatures at run time."""
    import inspect
    v = _verl()
    A, Alg = v.ActorConfig, v.AlgoConfig
    use_kl_loss = _field_default(A, "use_kl_loss")
    use_kl_in_reward = _field_default(Alg, "use_kl_in_reward")
    kl_ctrl = _field_default(Alg, "kl_ctrl")
    loss_beta, loss_kind = _field_default(A, "kl_loss_coef"), _field_default(A, "kl_loss_type")
    reward_beta, reward_kind = kl_ctrl.kl_coef, _field_default(Alg, "kl_penalty")
    kl_in = "loss" if use_kl_loss else "reward" if use_kl_in_reward else None
    grpo_eps = inspect.signature(v.ca.compute_grpo_outcome_advantage).parameters["epsilon"].default
    return {
        "clip_low": _field_default(A, "clip_ratio_low"),
        "clip_high": _field_default(A, "clip_ratio_high"),
        "dual_clip": _field_default(A, "clip_ratio_c"),
        "value_clip": _field_default(v.CriticConfig, "cliprange_value"),
        "kl_in": kl_in,                         # None: neither use_kl_loss nor use_kl_in_reward
        "kl_beta": {"loss": loss_beta, "reward": reward_beta, None: 0.0}[kl_in],
        "kl_estimator": {"loss": KL_KINDS.get(loss_kind, loss_kind),
                         "reward": KL_KINDS.get(reward_kind, reward_kind), None: None}[kl_in],
        "kl_beta_if_in_loss": loss_beta,                       # actor.kl_loss_coef
        "kl_estimator_if_in_loss": f"{KL_KINDS.get(loss_kind, loss_kind)} ({loss_kind})",
        "kl_beta_if_in_reward": reward_beta,                   # algorithm.kl_ctrl.kl_coef
        "kl_estimator_if_in_reward": f"{KL_KINDS.get(reward_kind, reward_kind)} ({reward_kind})",
        "gae_lambda": _field_default(Alg, "lam"),
        "gamma": _field_default(Alg, "gamma"),
        "group_size": _field_default(v.RolloutConfig, "n"),
        "loss_agg": _field_default(A, "loss_agg_mode"),
        "adv_eps": grpo_eps,
        "grpo_scale": "group" if _field_default(Alg, "norm_adv_by_std_in_grpo") else "none",
        "advantage_estimator": _field_default(Alg, "adv_estimator"),
        "whiten_eps": 1e-8,       # a constant in masked_whiten (torch_functional.py:343), no setting
    }


def torch_ones_like(x):
    import torch
    return torch.ones_like(x)


def _numeric(mask, like):
    return mask.to(like.dtype)


def _expand(advantages, logp):
    return advantages.unsqueeze(-1).expand_as(logp) if advantages.dim() == 1 else advantages


def _batch_info(mask, norm_len):
    # what verl's engine hands agg_loss for one mini-batch on one rank
    # (verl/workers/utils/losses.py:65-68, verl/workers/engine/fsdp/transformer_impl.py:730-735)
    return {"dp_size": 1, "batch_num_tokens": int(mask.sum()), "global_batch_size": mask.shape[0],
            "loss_scale_factor": norm_len}


class Verl:
    """verl with ``loss_agg_mode`` = ``agg_mode`` (None: verl's default, read at run time)."""

    framework = {"verl": f"=={VERL}"}
    agg_mode: str | None = None

    def __init__(self, agg_mode: str | None = None):
        self.agg_mode = agg_mode
        self.name = "verl" if agg_mode is None else f"verl-{agg_mode}"

    framework_defaults = staticmethod(framework_defaults)

    # the declarations are filled in below the class (they cite lines of the installed verl)
    shims: dict = {}
    known_deviations: dict = {}

    def _mode(self) -> str:
        return self.agg_mode or _field_default(_verl().ActorConfig, "loss_agg_mode")

    def _agg(self, agg):
        mine = self._mode()
        if agg != mine and agg in AGG_MODES:
            raise Unsupported(f"{self.name} aggregates as loss_agg_mode={mine!r} only; "
                              f"{agg!r} is the adapter {'verl' if agg == self._default() else 'verl-' + agg}")
        return agg                    # an unknown string goes to verl, which judges it

    @staticmethod
    def _default():
        return _field_default(_verl().ActorConfig, "loss_agg_mode")

    # --- returns and advantages ---------------------------------------------------------------

    def gae(self, rewards, values, mask, gamma=1.0, lam=0.95):
        # ray_trainer.compute_advantage calls it so (verl/trainer/ppo/ray_trainer.py:220)
        return _verl().ca.compute_gae_advantage_return(
            token_level_rewards=rewards, values=values, response_mask=_numeric(mask, rewards),
            gamma=gamma, lam=lam)

    def discounted_returns(self, rewards, mask, gamma=1.0):
        # REINFORCE++'s returns (its first output is those returns whitened); verl reads only
        # config.gamma, from the AlgoConfig the trainer passes (ray_trainer.py:254)
        v = _verl()
        _, returns = v.ca.compute_reinforce_plus_plus_outcome_advantage(
            token_level_rewards=rewards, response_mask=_numeric(mask, rewards),
            config=v.AlgoConfig(gamma=gamma))
        return returns

    def _scores_in(self, scores):
        return scores.unsqueeze(-1), torch_ones_like(scores.unsqueeze(-1))

    def group_normalized_advantages(self, scores, group_ids, scale="group", eps=1e-6):
        if scale not in ("group", "none"):
            raise Unsupported(f"verl's GRPO has only norm_adv_by_std_in_grpo=True ('group') or "
                              f"False ('none'), no scale={scale!r}")
        rewards, ones = self._scores_in(scores)
        adv, _ = _verl().ca.compute_grpo_outcome_advantage(
            token_level_rewards=rewards, response_mask=ones, index=group_ids.cpu().numpy(),
            epsilon=eps, norm_adv_by_std_in_grpo=(scale == "group"))
        return adv[:, 0]

    def leave_one_out_advantages(self, scores, group_ids):
        v = _verl()
        rewards, ones = self._scores_in(scores)
        adv, _ = v.ca.compute_rloo_outcome_advantage(
            token_level_rewards=rewards, response_mask=ones, index=group_ids.cpu().numpy(),
            config=v.AlgoConfig(adv_estimator="rloo"))
        return adv[:, 0]

    def batch_normalized_advantages(self, advantages, mask=None, eps=1e-8):
        if eps != 1e-8:
            raise Unsupported(f"masked_whiten adds a fixed 1e-8 to the variance, not eps={eps!r} "
                              f"({_at(TF + ':343')})")
        m = torch_ones_like(advantages) if mask is None else _numeric(mask, advantages)
        return _verl().F.masked_whiten(advantages, m)

    # --- KL ---------------------------------------------------------------------------------

    def kl_estimate(self, logp, ref_logp, mask=None, kind="k3"):
        out = _verl().ca.kl_penalty(logp, ref_logp, kl_penalty=KL_NAMES.get(kind, kind))
        if mask is not None:
            out = out * _numeric(mask, out)    # shim: apply_kl_penalty's `kld * response_mask`
        return out

    # --- losses -----------------------------------------------------------------------------

    def aggregate(self, values, mask, mode="token-mean", norm_len=None):
        mode = self._agg(mode)
        return _verl().ca.agg_loss(loss_mat=values, loss_mask=mask.to(bool), loss_agg_mode=mode,
                                   **_batch_info(mask, norm_len))

    def _actor_config(self, agg, norm_len, **clip):
        v = _verl()
        return v.ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                             loss_agg_mode=agg, loss_scale_factor=norm_len, **clip)

    def _policy_loss(self, loss_mode, logp, old_logp, advantages, mask, agg, config):
        # verl/workers/utils/losses.py:101-112: the registered loss with the actor config, whose
        # global_batch_info the engine has filled in (losses.py:65-68)
        config.global_batch_info.update(_batch_info(mask, config.loss_scale_factor))
        fn = _verl().ca.get_policy_loss_fn(loss_mode)
        loss, _metrics = fn(old_log_prob=old_logp, log_prob=logp,
                            advantages=_expand(advantages, logp), response_mask=mask.to(bool),
                            loss_agg_mode=agg, config=config, rollout_is_weights=None)
        return loss

    def policy_gradient_loss(self, logp, advantages, mask, agg="token-mean", norm_len=None):
        agg = self._agg(agg)
        config = self._actor_config(agg, norm_len)
        # 'gpg' ignores old_log_prob; the trainer hands it the rollout's, here logp detached
        return self._policy_loss("gpg", logp, logp.detach(), advantages, mask, agg, config)

    def ppo_clip_loss(self, logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None,
                      dual_clip=None, agg="token-mean", norm_len=None):
        agg = self._agg(agg)
        config = self._actor_config(
            agg, norm_len, clip_ratio=clip_low, clip_ratio_low=clip_low,
            clip_ratio_high=clip_low if clip_high is None else clip_high,
            clip_ratio_c=math.inf if dual_clip is None else dual_clip)
        loss_mode = config.policy_loss.get("loss_mode", "vanilla")     # losses.py:101
        return self._policy_loss(loss_mode, logp, old_logp, advantages, mask, agg, config)

    def value_loss(self, values, old_values, returns, mask, clip=None, agg="token-mean",
                   norm_len=None):
        agg = self._agg(agg)
        # verl/workers/utils/losses.py:186-197 (critic loss_agg_mode follows the actor's)
        loss, _clipfrac = _verl().ca.compute_value_loss(
            vpreds=values, returns=returns, values=old_values, response_mask=mask.to(bool),
            cliprange_value=math.inf if clip is None else clip, loss_agg_mode=agg,
            **_batch_info(mask, norm_len))
        return loss

    # --- log-probabilities -------------------------------------------------------------------

    def token_logprobs(self, logits, tokens):
        return _verl().F.logprobs_from_logits(logits, tokens)


# --- declarations (lines of the installed verl 0.9.1) -------------------------------------------

SHIMS = {
    "kl_estimate": "with a mask, multiplies kl_penalty's output by the response mask, as "
        "apply_kl_penalty does right after the call (" + _at("verl/trainer/ppo/ray_trainer.py:103") + ")",
    "ppo_clip_loss": "dual_clip=None is passed as clip_ratio_c=inf, because the 'vanilla' loss "
        "always applies the dual clip with clip_ratio_c, default 3.0 (" + _at(CA + ":1355") + ")",
    "value_loss": "clip=None is passed as cliprange_value=inf, because compute_value_loss always "
        "clips the value prediction (" + _at(CA + ":2171") + ")",
}

DEVIATIONS = {
    # GAE
    "gae/matches-reference": "whitens the advantages over the batch (masked_whiten) before "
        "returning them (" + _at(CA + ":262") + ")",
    "gae/exact-advantage-with-true-values": "whitens the advantages over the batch (masked_whiten) "
        "before returning them (" + _at(CA + ":262") + ")",
    "gae/gradient-matches-reference": "computes under torch.no_grad, so no gradient reaches "
        "rewards or values (" + _at(CA + ":244") + ")",
    "gae/padding-1e30": "padded positions are not 0: advantages there are whitened values and "
        "returns there are the padded values (" + _at(CA + ":261") + ")",
    "gae/padding-inf": "reads padded values through values[:, t] * response_mask[:, t], and "
        "inf * 0 = NaN reaches every real token (" + _at(CA + ":255") + ")",
    "gae/padding-nan": "reads padded values through values[:, t] * response_mask[:, t], and "
        "NaN * 0 = NaN reaches every real token (" + _at(CA + ":255") + ")",
    "gae/rejects-lam-outside-unit-interval": "does not validate lam (" + _at(CA + ":216") + ")",
    "gae/rejects-row-without-real-token": "does not validate the mask; a row without a real token "
        "is processed (" + _at(CA + ":216") + ")",
    # returns (REINFORCE++)
    "discounted_returns/gradient-matches-reference": "computes under torch.no_grad, so no gradient "
        "reaches the rewards (" + _at(CA + ":716") + ")",
    "discounted_returns/padding-inf": "masks by multiplying, new_running_return * response_mask, "
        "so inf padding becomes NaN and is carried into every real token (" + _at(CA + ":726") + ")",
    "discounted_returns/padding-nan": "masks by multiplying, new_running_return * response_mask, "
        "so NaN padding is carried into every real token (" + _at(CA + ":726") + ")",
    "discounted_returns/rejects-gamma-outside-unit-interval": "does not validate gamma "
        "(" + _at(CA + ":715") + ")",
    "discounted_returns/rejects-integer-rewards": "accepts integer rewards and returns integer "
        "returns (zeros_like of the rewards); nothing checks the dtype (" + _at(CA + ":717") + ")",
    # groups
    "group_normalized_advantages/rejects-group-of-one": "a group of one gets mean 0 and std 1, so "
        "its advantage is s / (1 + eps), not an error (" + _at(CA + ":316") + ")",
    "leave_one_out_advantages/rejects-group-of-one": "a group of one keeps its raw score as the "
        "advantage, not an error (" + _at(CA + ":630") + ")",
    # whitening
    "batch_normalized_advantages/matches-reference": "masked_whiten whitens every entry, padded ones "
        "included, so padded outputs are (x - mean) * rsqrt(var + 1e-8), not 0 (" + _at(TF + ":343") + ")",
    "batch_normalized_advantages/padding-*": "masked_whiten whitens every entry, padded ones "
        "included, so padded outputs carry the padding (x - mean) * rsqrt(var + 1e-8) instead of "
        "0 (" + _at(TF + ":343") + ")",
    # KL
    "kl_estimate/padding-inf": "kl_penalty computes every entry and the trainer masks by "
        "multiplying, kld * response_mask, which keeps the NaN of inf - inf at padded positions "
        "(" + _at("verl/trainer/ppo/ray_trainer.py:103") + ")",
    "kl_estimate/padding-nan": "kl_penalty computes every entry and the trainer masks by "
        "multiplying, kld * response_mask, which keeps NaN at padded positions "
        "(" + _at("verl/trainer/ppo/ray_trainer.py:103") + ")",
    "kl_estimate/large-log-ratios": "k3 ('low_var_kl') clamps the log-ratio to [-20, 20] and "
        "the estimate to [-10, 10]: at l = -3 it gives 10 where exp(3) - 1 - 3 = 16.09 ("
        + _at(CA + ":2242-2245") + ")",
    "kl_estimate/rejects-mixed-float-dtypes": "mixes float dtypes by silent type promotion "
        "(" + _at(CA + ":2228") + ")",
}

# checks whose calls all aggregate as token-mean: they run (and deviate) in the token-mean variant only
TOKEN_MEAN_DEVIATIONS = {
    "aggregate/rejects-mask-with-hole": "agg_loss does not validate the mask; a mask whose real "
        "tokens are not a prefix is aggregated as given (" + _at(CA + ":1170") + ")",
    "value_loss/padding-inf": "computes (V - R)^2 on padded entries too and masks afterwards with "
        "torch.where, so the gradient there is 0 * NaN = NaN (" + _at(CA + ":2172") + ")",
    "value_loss/padding-nan": "computes (V - R)^2 on padded entries too and masks afterwards with "
        "torch.where, so the gradient there is 0 * NaN = NaN (" + _at(CA + ":2172") + ")",
}


def _seq_mean(line: int) -> dict:
    """Deviations of agg_loss's seq-mean modes, which mask by multiplying, loss_mat * loss_mask."""
    why = ("agg_loss's {mode} masks by multiplying, loss_mat * loss_mask, so {fill} padding "
           "makes the loss NaN (" + _at(CA + f":{line}") + ")")
    out = {}
    for estimator in ("aggregate", "policy_gradient_loss", "ppo_clip_loss", "value_loss"):
        for fill, text in (("inf", "inf"), ("nan", "NaN")):
            out[f"{estimator}/padding-{fill}"] = why.replace("{fill}", text)
    return out


# per aggregation mode: the checks that run in that variant only (their calls use that mode)
MODE_DEVIATIONS = {
    "token-mean": TOKEN_MEAN_DEVIATIONS,
    "seq-mean-token-sum": {k: v.replace("{mode}", "seq-mean-token-sum")
                           for k, v in _seq_mean(1182).items()},
    "seq-mean-token-sum-norm": {k: v.replace("{mode}", "seq-mean-token-sum-norm")
                                for k, v in _seq_mean(1182).items()},
    "seq-mean-token-mean": {k: v.replace("{mode}", "seq-mean-token-mean")
                            for k, v in _seq_mean(1196).items()},
}

Verl.shims = SHIMS


def _variant(agg_mode: str | None, declared_mode: str) -> Verl:
    """``declared_mode``: the mode whose deviations the variant declares (for the plain variant,
    verl 0.9.1's default, token-mean; tests/test_adapter_verl.py checks it is the default)."""
    adapter = Verl(agg_mode)
    adapter.known_deviations = {**DEVIATIONS, **MODE_DEVIATIONS[declared_mode]}
    return adapter


verl = _variant(None, "token-mean")
verl_seq_mean_token_sum = _variant("seq-mean-token-sum", "seq-mean-token-sum")
verl_seq_mean_token_mean = _variant("seq-mean-token-mean", "seq-mean-token-mean")
verl_seq_mean_token_sum_norm = _variant("seq-mean-token-sum-norm", "seq-mean-token-sum-norm")
VARIANTS = (verl, verl_seq_mean_token_sum, verl_seq_mean_token_mean, verl_seq_mean_token_sum_norm)
