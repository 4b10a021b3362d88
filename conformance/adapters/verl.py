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
- Outputs come back uncast, in the dtype verl produces.

Shim (a step verl's trainer does right after the call, so the adapter does it too, declared in
``shims``): with a mask, ``kl_estimate`` multiplies ``kl_penalty``'s output by it, as
``apply_kl_penalty`` does on the next line (ray_trainer.py:103). The actor's KL-loss path
(losses.py:135-138) hands the unmasked estimate to ``agg_loss`` instead; that path is what
``aggregate`` certifies.

Variants: verl's ``loss_agg_mode`` (``actor.loss_agg_mode``; the critic follows it) selects the
aggregation. ``verl`` is the default (``ActorConfig.loss_agg_mode``, read at run time:
token-mean); ``verl-seq-mean-token-sum``, ``verl-seq-mean-token-mean`` and
``verl-seq-mean-token-sum-norm`` each declare their own mode in ``capabilities``, together with
the options verl has no setting for: GRPO's ``scale='batch'``, a whitening ``eps`` other than
masked_whiten's fixed 1e-8 (the harness calls a variant with what it honours; a direct call with
another contract mode is ``Unsupported``, an unknown mode string is handed to verl, which judges
it). Known deviations that depend on the mode are declared from the variant's capabilities.

Training step (``train_step``, conformance/adapters/verl_train.py, imported on first use): verl's
PPO trainer path for grpo, dr_grpo, dapo (GRPO advantages), rloo, reinforce_pp and ppo (GAE with
the critic): ``RayPPOTrainer``'s reference log-probs, KL penalty, advantages and actor / critic
updates through ``TrainingWorker`` and the FSDP engine's micro-batched forward-backward, with
Ray, FSDP, the device platform and the optimizer step stubbed (``shims["train_step"]``). It needs
verl's worker dependencies beyond the minimal install (peft, torchdata, datasets, uvicorn, fastapi,
cachetools); without them it raises ``Unsupported``. ``model.use_remove_padding`` is verl's default
(True: every sequence packed into one row with restarting position ids, which transformers' sdpa
attention masks block-diagonally on CPU); ``verl-no-rmpad`` runs the padded path.

Not provided: ``kl_penalized_rewards`` (verl's ``apply_kl_penalty`` works on a ``DataProto`` in
ray_trainer.py, whose import needs more than this minimal install), ``sequence_logprob`` and the
preference losses (no such functions in verl's PPO code).
"""

from __future__ import annotations

import functools
import math

import torch

from conformance.adapters import pins, support, verl_train
from conformance.contract import SCALES

VERL = pins.PINS["verl"]
CA = "verl/trainer/ppo/core_algos.py"
TF = "verl/utils/torch_functional.py"
KL_NAMES = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}     # verl's kl_penalty names
#: ActorConfig.loss_agg_mode's default in the pinned verl (the plain variant's capabilities;
#: tests/test_adapter_verl.py checks it against the installed verl)
DEFAULT_AGG = "token-mean"
_at = support.citer("verl")


def _kind(name: str) -> str:
    """One of verl's kl_penalty names in the contract's names (k1, k2, k3) where it is one."""
    return {v: k for k, v in KL_NAMES.items()}.get(name, name)


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


_field_default = support.field_default


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
        "kl_estimator": {"loss": _kind(loss_kind), "reward": _kind(reward_kind), None: None}[kl_in],
        "kl_beta_if_in_loss": loss_beta,                       # actor.kl_loss_coef
        "kl_estimator_if_in_loss": _kind(loss_kind),           # actor.kl_loss_type
        "kl_beta_if_in_reward": reward_beta,                   # algorithm.kl_ctrl.kl_coef
        "kl_estimator_if_in_reward": _kind(reward_kind),       # algorithm.kl_penalty
        "gae_lambda": _field_default(Alg, "lam"),
        "gamma": _field_default(Alg, "gamma"),
        "group_size": _field_default(v.RolloutConfig, "n"),
        "loss_agg": _field_default(A, "loss_agg_mode"),
        "adv_eps": grpo_eps,
        "grpo_scale": "group" if _field_default(Alg, "norm_adv_by_std_in_grpo") else "none",
        "advantage_estimator": _field_default(Alg, "adv_estimator"),
        "whiten_eps": 1e-8,       # a constant in masked_whiten (torch_functional.py:343), no setting
    }


def _numeric(mask, like):
    return mask.to(like.dtype)


def _batch_info(mask, norm_len):
    # what verl's engine hands agg_loss for one mini-batch on one rank
    # (verl/workers/utils/losses.py:65-68, verl/workers/engine/fsdp/transformer_impl.py:730-735)
    return {"dp_size": 1, "batch_num_tokens": int(mask.sum()), "global_batch_size": mask.shape[0],
            "loss_scale_factor": norm_len}


#: verl's GRPO switch: norm_adv_by_std_in_grpo (core_algos.py:273)
GRPO_SCALES = {"group": True, "none": False}


#: the algorithms train_step runs through verl's PPO trainer (verl_train.ESTIMATORS)
TRAIN_ALGORITHMS = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo")


def capabilities(agg_mode: str) -> dict:
    """What verl with ``loss_agg_mode`` = ``agg_mode`` honours: that mode (the critic follows the
    actor's, losses.py:186-197), the two GRPO scales, and masked_whiten's fixed eps (1e-8); for
    train_step, the six online algorithms, each in that mode, with a temperature
    (``rollout.temperature`` in meta_info, ray_trainer.py:1331), the KL in the loss
    (``actor.use_kl_loss``) or in the reward (``algorithm.use_kl_in_reward``), and REINFORCE++
    and PPO with their KL in the reward only (the contract's recipes)."""
    algorithms = list(TRAIN_ALGORITHMS) if verl_train.available() else []
    out = {"agg": [agg_mode], "scale": [s for s in SCALES if s in GRPO_SCALES],
           "batch_normalized_advantages.eps": False,
           "algorithms": algorithms, "temperature": True}
    for alg in algorithms:
        out[f"{alg}.agg"] = [agg_mode]
        out[f"{alg}.kl_in"] = ["reward"] if alg in ("reinforce_pp", "ppo") else ["loss", "reward"]
    return out


def default_rmpad() -> bool:
    """verl's default ``model.use_remove_padding`` (HFModelConfig, read at run time; True in
    verl 0.9.1, verl/workers/config/model.py:120)."""
    from verl.workers.config import HFModelConfig
    return bool(_field_default(HFModelConfig, "use_remove_padding"))


class Verl:
    """verl with ``loss_agg_mode`` = ``agg_mode`` (None: verl's default, read at run time) and
    ``model.use_remove_padding`` = ``rmpad`` (None: verl's default, True; only train_step reads
    it)."""

    framework = pins.framework("verl")
    agg_mode: str | None = None

    def __init__(self, agg_mode: str | None = None, rmpad: bool | None = None):
        self.agg_mode = agg_mode
        self.rmpad = rmpad
        self.name = "verl" if agg_mode is None else f"verl-{agg_mode}"
        if rmpad is not None:
            self.name += "-rmpad" if rmpad else "-no-rmpad"
        self.capabilities = capabilities(agg_mode or DEFAULT_AGG)
        self.known_deviations = declarations(self.capabilities)

    def train_step(self, model, ref_model, batch, config):
        """One step of verl's PPO trainer through its real path (conformance/adapters/verl_train.py):
        ``{"loss", "grads"}``."""
        from conformance.adapters import verl_train
        agg = self._agg(config["agg"], "train_step")
        rmpad = default_rmpad() if self.rmpad is None else self.rmpad
        return verl_train.train_step(model, ref_model, batch, config, agg=agg, rmpad=rmpad)

    framework_defaults = staticmethod(framework_defaults)

    # the declarations are filled in below the class (they cite lines of the installed verl)
    shims: dict = {}
    #: where verl tracks a declared deviation (the issue asking why kl_penalty clamps its estimate)
    upstream = dict.fromkeys(("kl_estimate/large-log-ratios", "kl_estimate/log-ratios-beyond-20"),
                             "https://github.com/verl-project/verl/issues/2928")

    def _mode(self) -> str:
        return self.agg_mode or _field_default(_verl().ActorConfig, "loss_agg_mode")

    def _agg(self, agg, function: str):
        """``agg`` if this variant aggregates so (``Unsupported`` for another contract mode); a
        string that is no contract mode goes to verl, which judges it."""
        return support.honour(self, "agg", agg, function,
                              why=f"verl's loss_agg_mode selects one mode per run ({_at(CA, 1170)})")

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
        return scores.unsqueeze(-1), torch.ones_like(scores.unsqueeze(-1))

    def group_normalized_advantages(self, scores, group_ids, scale="group", eps=1e-6):
        by_std = support.translate(self, "scale", scale, GRPO_SCALES, "group_normalized_advantages",
                                   why=f"norm_adv_by_std_in_grpo is a bool ({_at(CA, 273)})")
        rewards, ones = self._scores_in(scores)
        adv, _ = _verl().ca.compute_grpo_outcome_advantage(
            token_level_rewards=rewards, response_mask=ones, index=group_ids.cpu().numpy(),
            epsilon=eps, norm_adv_by_std_in_grpo=by_std)
        return adv[:, 0]

    def leave_one_out_advantages(self, scores, group_ids):
        v = _verl()
        rewards, ones = self._scores_in(scores)
        adv, _ = v.ca.compute_rloo_outcome_advantage(
            token_level_rewards=rewards, response_mask=ones, index=group_ids.cpu().numpy(),
            config=v.AlgoConfig(adv_estimator="rloo"))
        return adv[:, 0]

    def batch_normalized_advantages(self, advantages, mask=None, eps=1e-8):
        support.honour(self, "eps", eps, "batch_normalized_advantages", default=1e-8,
                       why=f"masked_whiten adds a fixed 1e-8 to the variance ({_at(TF, 343)})")
        m = torch.ones_like(advantages) if mask is None else _numeric(mask, advantages)
        return _verl().F.masked_whiten(advantages, m)

    # --- KL ---------------------------------------------------------------------------------

    def kl_estimate(self, logp, ref_logp, mask=None, kind="k3"):
        out = _verl().ca.kl_penalty(logp, ref_logp, kl_penalty=KL_NAMES.get(kind, kind))
        if mask is not None:
            out = out * _numeric(mask, out)    # shim: apply_kl_penalty's `kld * response_mask`
        return out

    # --- losses -----------------------------------------------------------------------------

    def aggregate(self, values, mask, mode="token-mean", norm_len=None):
        mode = self._agg(mode, "aggregate")
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
                            advantages=support.per_token(advantages, logp), response_mask=mask.to(bool),
                            loss_agg_mode=agg, config=config, rollout_is_weights=None)
        return loss

    def policy_gradient_loss(self, logp, advantages, mask, agg="token-mean", norm_len=None):
        agg = self._agg(agg, "policy_gradient_loss")
        config = self._actor_config(agg, norm_len)
        # 'gpg' ignores old_log_prob; the trainer hands it the rollout's, here logp detached
        return self._policy_loss("gpg", logp, logp.detach(), advantages, mask, agg, config)

    def ppo_clip_loss(self, logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None,
                      dual_clip=None, agg="token-mean", norm_len=None):
        agg = self._agg(agg, "ppo_clip_loss")
        config = self._actor_config(
            agg, norm_len, clip_ratio=clip_low, clip_ratio_low=clip_low,
            clip_ratio_high=clip_low if clip_high is None else clip_high,
            clip_ratio_c=math.inf if dual_clip is None else dual_clip)
        loss_mode = config.policy_loss.get("loss_mode", "vanilla")     # losses.py:101
        return self._policy_loss(loss_mode, logp, old_logp, advantages, mask, agg, config)

    def value_loss(self, values, old_values, returns, mask, clip=None, agg="token-mean",
                   norm_len=None):
        agg = self._agg(agg, "value_loss")
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

#: masked_whiten ends compute_gae_advantage_return: every exact GAE advantage differs
_GAE_WHITENS = ("whitens the advantages over the batch (masked_whiten) before returning them "
                "(" + _at(CA + ":262") + ")")
#: kl_penalty's 'low_var_kl' clamps twice (its log-ratio, then its estimate)
_K3_CLAMPS = support.clamps(
    "k3's ('low_var_kl') log-ratio and estimate", "[-20, 20] and [-10, 10]", _at(CA, "2242-2245"),
    "at l = -3 it gives 10 where exp(3) - 1 - 3 = 16.09")
#: compute_policy_loss_vanilla clamps logp - old_logp before exp (the other registered losses
#: have the same line, e.g. core_algos.py:1256, :1420; only 'vanilla' is certified)
_RATIO_CLAMPS = support.clamps(
    "the log-ratio logp - old_logp of the 'vanilla' policy loss", "[-20, 20] before exp",
    _at(CA, 1338),
    "a token with A < 0 whose ratio passed exp(20) (only reachable with the dual clip off, "
    "clip_ratio_c = inf) keeps the loss of r = exp(20) and gets no gradient; at logp - old_logp "
    "= 25, A = -0.5 the loss is 2.43e+08 with gradient 0 where the contract's is 3.60e+10 with "
    "gradient 3.60e+10")
#: masked_mean's divisor, which masked_whiten uses for its mean and variance
_MEAN_DIVISOR = (
    "masked_mean divides by the count plus 1e-8, mask.sum() + 1e-8, so the whitening mean is off "
    "by a relative 1e-8 / n and a batch of equal values (variance 0) is not whitened to 0 but to "
    "(x - mean) * rsqrt(1e-8): at advantages (1, 1) it gives 5e-05 for both, which biases the "
    "expected gradient of small batches (" + _at(TF, "308, :343") + ")")

DEVIATIONS = {
    # aggregation, in every mode
    # the 'vanilla' policy loss
    "ppo_clip_loss/log-ratios-beyond-20": _RATIO_CLAMPS,
    "aggregate/rejects-mask-with-hole": "agg_loss does not validate the mask; a mask whose real "
        "tokens are not a prefix is aggregated as given (" + _at(CA, "1140-1206") + ")",
    # GAE
    # one cause, five checks: every exact GAE value (the edge values of gamma and lam included)
    **dict.fromkeys(("gae/matches-reference", "gae/exact-advantage-with-true-values",
                     "gae/lam-zero-gives-td-error", "gae/lam-one-gives-return-minus-value",
                     "gae/gamma-zero-gives-reward-minus-value"), _GAE_WHITENS),
    "gae/gradient-matches-reference": support.no_grad("rewards or values", _at(CA, 244)),
    "gae/padding-1e30": "padded positions are not 0: advantages there are whitened values and "
        "returns there are the padded values (" + _at(CA + ":261") + ")",
    "gae/padding-inf": "reads padded values through values[:, t] * response_mask[:, t], and "
        "inf * 0 = NaN reaches every real token (" + _at(CA + ":255") + ")",
    "gae/padding-nan": "reads padded values through values[:, t] * response_mask[:, t], and "
        "NaN * 0 = NaN reaches every real token (" + _at(CA + ":255") + ")",
    "gae/rejects-lam-outside-unit-interval": support.no_validation("lam", _at(CA, 216)),
    "gae/rejects-row-without-real-token": support.no_validation(
        "the mask", _at(CA, 216), "a row without a real token is processed"),
    # returns (REINFORCE++)
    "discounted_returns/gradient-matches-reference": support.no_grad("the rewards", _at(CA, 716)),
    "discounted_returns/padding-inf": "masks by multiplying, new_running_return * response_mask, "
        "so inf padding becomes NaN and is carried into every real token (" + _at(CA + ":726") + ")",
    "discounted_returns/padding-nan": "masks by multiplying, new_running_return * response_mask, "
        "so NaN padding is carried into every real token (" + _at(CA + ":726") + ")",
    "discounted_returns/rejects-gamma-outside-unit-interval": support.no_validation(
        "gamma", _at(CA, 715)),
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
    "batch_normalized_advantages/exact-bias-shrinks-with-batch-size": _MEAN_DIVISOR,
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
    **dict.fromkeys(("kl_estimate/large-log-ratios", "kl_estimate/log-ratios-beyond-20"),
                    _K3_CLAMPS),
    "kl_estimate/rejects-mixed-float-dtypes": support.type_promotion(_at(CA, 2228)),
}

def _multiplies(mode: str, line: int) -> dict:
    """agg_loss's seq-mean modes mask by multiplying, loss_mat * loss_mask: NaN or inf padding
    makes the loss NaN, in every loss that ends with agg_loss."""
    why = support.masks_by_multiplication(_at(CA, line), f"the loss matrix in agg_loss's {mode}",
                                          "loss_mat * loss_mask", "the loss")
    return {f"{estimator}/padding-{fill}": why for fill in ("inf", "nan")
            for estimator in ("aggregate", "policy_gradient_loss", "ppo_clip_loss", "value_loss")}


_VALUE_WHERE = ("computes (V - R)^2 on padded entries too and masks afterwards with torch.where "
                "(masked_sum), so the gradient there is 0 * NaN = NaN (" + _at(CA, 2172) + ")")

# deviations that depend on the variant's aggregation mode (its capabilities["agg"])
DEVIATIONS_BY_MODE = (
    support.when("value_loss.agg", "token-mean", {"value_loss/padding-inf": _VALUE_WHERE,
                                                  "value_loss/padding-nan": _VALUE_WHERE}),
    support.when("agg", "seq-mean-token-sum", _multiplies("seq-mean-token-sum", 1182)),
    support.when("agg", "seq-mean-token-sum-norm", _multiplies("seq-mean-token-sum-norm", 1182)),
    support.when("agg", "seq-mean-token-mean", _multiplies("seq-mean-token-mean", 1196)),
)


SHIMS["train_step"] = verl_train.SHIM


def declarations(capabilities: dict) -> dict:
    """A variant's known deviations, from what it honours (its aggregation mode; train_step's,
    conformance/adapters/verl_train.py, where its algorithms are honoured, i.e. where verl's
    trainer imports)."""
    if not capabilities.get("algorithms"):
        return support.declarations(capabilities, DEVIATIONS, *DEVIATIONS_BY_MODE)
    return support.declarations(capabilities, DEVIATIONS, verl_train.DEVIATIONS,
                                *DEVIATIONS_BY_MODE, *TRAINING_BY_MODE)


def _nan_in_step(mode: str, line: int) -> dict:
    """agg_loss's seq-mean modes multiply the loss matrix by the mask: NaN in padded
    old_log_probs makes the ratio, the policy loss and the step's loss NaN."""
    why = ("the policy loss's " + mode + " in agg_loss masks by multiplying, loss_mat * loss_mask, "
           "so NaN in padded old_log_probs (through the ratio) makes the loss NaN ("
           + _at(CA, line) + ")")
    return {f"{alg}/nan-old-logp-ignored": why for alg in TRAIN_ALGORITHMS}


#: train_step's deviations that depend on the variant's aggregation mode
TRAINING_BY_MODE = (
    support.when("agg", "seq-mean-token-sum", _nan_in_step("seq-mean-token-sum", 1182)),
    support.when("agg", "seq-mean-token-sum-norm", _nan_in_step("seq-mean-token-sum-norm", 1182)),
    support.when("agg", "seq-mean-token-mean", _nan_in_step("seq-mean-token-mean", 1196)),
)


Verl.shims = SHIMS

verl = Verl()
verl_seq_mean_token_sum = Verl("seq-mean-token-sum")
verl_seq_mean_token_mean = Verl("seq-mean-token-mean")
verl_seq_mean_token_sum_norm = Verl("seq-mean-token-sum-norm")
#: verl's trainer without remove-padding (model.use_remove_padding=False): padded batches through
#: the model with an attention mask, where the default packs every sequence into one row
verl_no_rmpad = Verl(rmpad=False)
VARIANTS = (verl, verl_seq_mean_token_sum, verl_seq_mean_token_mean, verl_seq_mean_token_sum_norm,
            verl_no_rmpad)
