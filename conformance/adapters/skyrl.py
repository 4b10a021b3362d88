"""Adapters for skyrl-train 0.3.1 (``rlconform setup skyrl``: ``skyrl_install.sh``, i.e.
``pip install --no-deps --ignore-requires-python skyrl-train==0.3.1`` plus ray 2.51.1, loguru,
omegaconf and jaxtyping).

skyrl-train declares Python 3.12 only and its package ``__init__`` imports far more than its math
needs, so ``skyrl_train/utils/ppo_utils.py`` (with the ``training_batch.py`` it imports) and
``skyrl_train/utils/torch_utils.py`` are loaded by file path, without running the package
``__init__``s; ``skyrl_train.training_batch`` is in ``sys.modules`` only while ppo_utils executes
its import of it (no stand-in: the real file). Ray is never initialised, so the registries are
local, as in a single process.

Each canonical function calls skyrl's own code the way skyrl's trainer and workers call it:

| canonical                     | skyrl                                                        |
|-------------------------------|--------------------------------------------------------------|
| `gae`                         | registered advantage estimator 'gae' (`compute_gae_advantage_return`) |
| `discounted_returns`          | the returns of the registered estimator 'reinforce++'        |
| `group_normalized_advantages` | registered estimator 'grpo' (`grpo_norm_by_std`)             |
| `leave_one_out_advantages`    | registered estimator 'rloo'                                  |
| `batch_normalized_advantages` | `normalize_advantages_dict` (the trainer's `advantage_batch_normalize` step) |
| `kl_estimate`                 | `compute_approx_kl` ('k1', 'k2', 'k3')                       |
| `aggregate`                   | `reduce_loss`                                                |
| `ppo_clip_loss`               | registered policy loss 'regular' ('dual_clip' with `dual_clip`) |
| `value_loss`                  | `ppo_critic_loss`                                            |
| `token_logprobs`              | `skyrl_train.utils.torch_utils.logprobs_from_logits`        |

Calling conventions (translations only, no values changed):
- Masks go in as float tensors in the data's dtype (skyrl builds its ``loss_mask`` with
  ``dtype=torch.float``, skyrl_train/dataset/preprocess.py:113).
- Advantage estimators are called through ``compute_advantages_and_returns`` with the keyword
  arguments the trainer passes (skyrl_train/trainer.py:771-781); the ``config`` is the
  ``trainer.algorithm`` node of skyrl's own ``ppo_base_config.yaml`` with the options set.
  Per-sequence scores go in as ``token_level_rewards`` of shape (B, 1) with a response mask of
  ones (skyrl sums each row); (B, 1) advantages come back as (B,). Group ids go in as a list
  (the trainer's ``data.metadata["uids"]``).
- Losses get the ``trainer.algorithm`` DictConfig from skyrl's ``ppo_base_config.yaml`` with
  ``loss_reduction``, ``eps_clip_low``/``eps_clip_high``, ``policy_loss_type`` and ``value_clip``
  set, and ``max_seq_len`` = ``norm_len`` (None: T, the contract's default; skyrl sets it to
  max_input_length + max_generate_length, skyrl_train/utils/utils.py:278).
- ``dual_clip=None`` selects ``policy_loss_type='regular'``; ``dual_clip=c`` selects
  ``'dual_clip'`` with ``clip_ratio_c=c``. (B,) advantages are broadcast over tokens.
- ``kl_estimate`` hands the mask to ``compute_approx_kl``'s own ``loss_mask`` argument (no shim).
  Outputs come back uncast.

Variants: skyrl's ``trainer.algorithm.loss_reduction`` selects the policy-loss aggregation.
``skyrl`` is the default (read at run time from ppo_base_config.yaml: token_mean);
``skyrl-sequence_mean`` (the contract's seq-mean-token-mean) and ``skyrl-seq_mean_token_sum_norm``
each declare their own mode in ``capabilities`` (a direct call in another mode is
``Unsupported``). skyrl has no seq-mean-token-sum. The critic loss ignores ``loss_reduction``:
``ppo_critic_loss`` always takes each row's token mean, then the batch mean, so every variant
declares ``"value_loss.agg": ["seq-mean-token-mean"]``.

Training step (``train_step``, conformance/adapters/skyrl_train.py): skyrl's real trainer and
policy-worker code (``RefWorkerBase.forward``, ``RayPPOTrainer.apply_reward_kl_penalty`` and
``compute_advantages_and_returns``, ``PolicyWorkerBase.ppo_train`` / ``forward_backward`` with
``HFModelWrapper.forward``) on the given models; Ray, the distributed strategy, CUDA and the rollout
are stubbed (``shims["train_step ..."]``). Algorithms: grpo in every variant, dapo, rloo and
reinforce_pp in the default (token_mean) variant, dr_grpo in skyrl-seq_mean_token_sum_norm; ppo
is not implemented (the critic worker is not wired). Deviations: ``train_declarations``.

Not provided: ``policy_gradient_loss`` (no plain policy-gradient loss among skyrl's registered
policy losses), ``kl_penalized_rewards`` (inline in ``RayPPOTrainer.apply_reward_kl_penalty``,
whose module needs the full skyrl install), ``sequence_logprob`` and the preference losses.
"""

from __future__ import annotations

import functools

from conformance.adapters import pins, support

SKYRL = pins.PINS["skyrl"]
PU = "skyrl_train/utils/ppo_utils.py"
#: the contract's aggregation modes -> skyrl's loss_reduction (ppo_utils.py:881-905); skyrl has
#: no seq-mean-token-sum
AGG = {"token-mean": "token_mean", "seq-mean-token-mean": "sequence_mean",
       "seq-mean-token-sum-norm": "seq_mean_token_sum_norm"}
CONTRACT_AGG = {v: k for k, v in AGG.items()}
#: skyrl's GRPO switch: grpo_norm_by_std
GRPO_SCALES = {"group": True, "none": False}
#: trainer.algorithm.loss_reduction's default in the pinned skyrl (the plain variant's
#: capabilities; tests/test_adapter_skyrl.py checks it against ppo_base_config.yaml)
DEFAULT_REDUCTION = "token_mean"
_at = support.citer("skyrl")


def _load(name: str, path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def _skyrl():
    """Load skyrl's math files by path, once (the module imports without skyrl installed)."""
    import sys
    from importlib.metadata import distribution
    from pathlib import Path
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    root = Path(distribution("skyrl-train").locate_file("skyrl_train"))
    tb_name = "skyrl_train.training_batch"
    had = tb_name in sys.modules
    training_batch = sys.modules.get(tb_name) or _load(tb_name, root / "training_batch.py")
    sys.modules[tb_name] = training_batch        # what ppo_utils imports (the real file)
    try:
        pu = _load("_rlconform_skyrl_ppo_utils", root / "utils" / "ppo_utils.py")
    finally:
        if not had:
            del sys.modules[tb_name]
    tu = _load("_rlconform_skyrl_torch_utils", root / "utils" / "torch_utils.py")
    base = OmegaConf.load(root / "config" / "ppo_base_config.yaml")
    return SimpleNamespace(pu=pu, tu=tu, tb=training_batch, base=base, OmegaConf=OmegaConf)


def _algorithm(**overrides):
    """skyrl's ``trainer.algorithm`` config (ppo_base_config.yaml) with ``overrides`` set."""
    s = _skyrl()
    cfg = s.OmegaConf.create(s.OmegaConf.to_container(s.base.trainer.algorithm, resolve=True))
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def framework_defaults() -> dict:
    """skyrl's defaults, read from its ppo_base_config.yaml and signatures at run time."""
    import inspect
    s = _skyrl()
    a, g = s.base.trainer.algorithm, s.base.generator
    kl_in = "loss" if a.use_kl_loss else "reward" if a.use_kl_in_reward else None
    return {
        "clip_low": a.eps_clip_low,
        "clip_high": a.eps_clip_high,
        "dual_clip": a.clip_ratio_c if a.policy_loss_type == "dual_clip" else None,
        "dual_clip_if_enabled": a.clip_ratio_c,              # policy_loss_type "dual_clip"
        "loss_type": a.policy_loss_type,
        "value_clip": a.value_clip,
        "kl_in": kl_in,
        "kl_beta": a.kl_loss_coef if kl_in else 0.0,
        "kl_estimator": a.kl_estimator_type if kl_in else None,
        "gae_lambda": a.lambd,
        "gamma": a.gamma,
        "group_size": g.n_samples_per_prompt,
        "loss_agg": CONTRACT_AGG.get(a.loss_reduction, a.loss_reduction),
        "adv_eps": inspect.signature(s.pu.compute_grpo_outcome_advantage).parameters["epsilon"].default,
        "grpo_scale": "group" if a.grpo_norm_by_std else "none",
        "advantage_estimator": a.advantage_estimator,
        "whiten_advantages": a.advantage_batch_normalize,
    }


def _numeric(mask, like):
    return mask.to(like.dtype)


def capabilities(reduction: str) -> dict:
    """What skyrl with ``loss_reduction`` = ``reduction`` honours: that reduction in the policy
    loss and ``reduce_loss``; the critic always reduces as sequence_mean (ppo_utils.py:195); the
    two GRPO scales; normalize_advantages_dict's fixed eps (ppo_utils.py:145)."""
    return {"agg": [CONTRACT_AGG[reduction]], "value_loss.agg": ["seq-mean-token-mean"],
            "scale": list(GRPO_SCALES), "batch_normalized_advantages.eps": False,
            **train_capabilities(reduction)}


def train_capabilities(reduction: str) -> dict:
    """What ``train_step`` honours with ``loss_reduction`` = ``reduction``: the algorithms whose
    aggregation that reduction is (dapo: token-mean, dr_grpo: seq-mean-token-sum-norm), the KL in
    the loss (``use_kl_loss``) or the reward (``use_kl_in_reward``; reinforce++: the reward only),
    the two GRPO scales, the sampling temperature, and ``max_seq_len`` as the length normaliser."""
    algorithms = ["grpo"]
    if reduction == "token_mean":                 # the default variant: also rloo, reinforce++
        algorithms += ["dapo", "rloo", "reinforce_pp"]
    if reduction == "seq_mean_token_sum_norm":
        algorithms.append("dr_grpo")
    caps = {"algorithms": algorithms}
    for a in algorithms:
        caps[f"{a}.agg"] = [CONTRACT_AGG[reduction]]
        caps[f"{a}.kl_in"] = ["reward"] if a == "reinforce_pp" else ["loss", "reward"]
        caps[f"{a}.temperature"] = True
        caps[f"{a}.norm_len"] = reduction == "seq_mean_token_sum_norm"
        if a in ("grpo", "dr_grpo", "dapo"):
            caps[f"{a}.scale"] = list(GRPO_SCALES)
    return caps


class Skyrl:
    """skyrl with ``trainer.algorithm.loss_reduction`` = ``reduction`` (None: the default)."""

    framework = pins.framework("skyrl")
    framework_defaults = staticmethod(framework_defaults)
    shims: dict = {}
    #: where skyrl tracks a declared deviation: compute_approx_kl's @torch.no_grad() used as a KL
    #: loss (issue 1340), normalize_advantages_dict's mean over padded entries (issue 1305)
    upstream = {
        "kl_estimate/gradient-matches-reference": "https://github.com/NovaSky-AI/SkyRL/issues/1340",
        "kl_estimate/exact-loss-gradients": "https://github.com/NovaSky-AI/SkyRL/issues/1340",
        "batch_normalized_advantages/matches-reference": "https://github.com/NovaSky-AI/SkyRL/issues/1305",
        "batch_normalized_advantages/padding-*": "https://github.com/NovaSky-AI/SkyRL/issues/1305",
    }

    def __init__(self, reduction: str | None = None):
        self.reduction = reduction
        self.name = "skyrl" if reduction is None else f"skyrl-{reduction}"
        self.capabilities = capabilities(reduction or DEFAULT_REDUCTION)
        self.known_deviations = {**declarations(self.capabilities),
                                 **train_declarations(reduction or DEFAULT_REDUCTION)}
        # train_step's KL term without gradient: the same cause as issue 1340
        self.upstream = {**type(self).upstream,
                         **{k: "https://github.com/NovaSky-AI/SkyRL/issues/1340"
                            for k in self.known_deviations if k.endswith("/kl-term-exact")}}

    # --- training step (conformance/adapters/skyrl_train.py) -----------------------------------
    def train_step(self, model, ref_model, batch, config):
        """One policy optimisation step through skyrl's trainer (reference forward, KL in the
        reward, advantages) and ``PolicyWorkerBase.ppo_train``; ``{"loss", "grads"}``."""
        from conformance.adapters import skyrl_train
        return skyrl_train.online_step(self, model, ref_model, batch, config)

    def _mode(self) -> str:
        return self.reduction or _skyrl().base.trainer.algorithm.loss_reduction

    def _agg(self, agg, function: str) -> str:
        """The contract's mode -> skyrl's loss_reduction, if this variant reduces so; a string
        that is no contract mode is handed to skyrl, which judges it."""
        return support.translate(self, "agg", agg, AGG, function, unknown="pass",
                                 why=f"loss_reduction selects one reduction per run ({_at(PU, 881)})")

    @staticmethod
    def _max_seq_len(values, norm_len):
        return values.shape[-1] if norm_len is None else norm_len

    # --- returns and advantages ---------------------------------------------------------------

    def _estimate(self, name, rewards, mask, index=None, values=None, **options):
        # skyrl_train/trainer.py:771-781
        pu = _skyrl().pu
        cfg = _algorithm(advantage_estimator=name, **options)
        return pu.compute_advantages_and_returns(
            token_level_rewards=rewards, response_mask=mask, index=index,
            adv_estimator=name, config=cfg, values=values, gamma=cfg.gamma, lambd=cfg.lambd,
            grpo_norm_by_std=cfg.grpo_norm_by_std, **({"epsilon": options["eps"]}
                                                       if "eps" in options else {}))

    def gae(self, rewards, values, mask, gamma=1.0, lam=0.95):
        return self._estimate("gae", rewards, _numeric(mask, rewards), values=values,
                              gamma=gamma, lambd=lam)

    def discounted_returns(self, rewards, mask, gamma=1.0):
        _, returns = self._estimate("reinforce++", rewards, _numeric(mask, rewards), gamma=gamma)
        return returns

    def _scores_in(self, scores):
        import torch
        return scores.unsqueeze(-1), torch.ones_like(scores.unsqueeze(-1))

    def group_normalized_advantages(self, scores, group_ids, scale="group", eps=1e-6):
        by_std = support.translate(self, "scale", scale, GRPO_SCALES, "group_normalized_advantages",
                                   why="grpo_norm_by_std is a bool (" + _at(PU, 1035) + ")")
        rewards, ones = self._scores_in(scores)
        adv, _ = self._estimate("grpo", rewards, ones, index=group_ids.tolist(), eps=eps,
                                grpo_norm_by_std=by_std)
        return adv[:, 0]

    def leave_one_out_advantages(self, scores, group_ids):
        rewards, ones = self._scores_in(scores)
        adv, _ = self._estimate("rloo", rewards, ones, index=group_ids.tolist())
        return adv[:, 0]

    def batch_normalized_advantages(self, advantages, mask=None, eps=1e-8):
        import torch
        support.honour(self, "eps", eps, "batch_normalized_advantages", default=1e-8,
                       why="normalize_advantages_dict clamps the variance at a fixed 1e-8 ("
                           + _at(PU, 145) + ")")
        s = _skyrl()
        m = torch.ones_like(advantages) if mask is None else _numeric(mask, advantages)
        # the trainer's advantage_batch_normalize step (skyrl_train/trainer.py:265)
        data = s.tb.TrainingInputBatch({"advantages": advantages, "response_mask": m})
        return s.pu.normalize_advantages_dict(data)["advantages"]

    # --- KL ---------------------------------------------------------------------------------

    def kl_estimate(self, logp, ref_logp, mask=None, kind="k3"):
        # the actor's KL loss (skyrl_train/workers/worker.py:680-685)
        return _skyrl().pu.compute_approx_kl(
            logp, ref_logp, loss_mask=None if mask is None else _numeric(mask, logp),
            kl_estimator_type=kind)

    # --- losses -----------------------------------------------------------------------------

    def aggregate(self, values, mask, mode="token-mean", norm_len=None):
        red = self._agg(mode, "aggregate")
        return _skyrl().pu.reduce_loss(values, _numeric(mask, values), red,
                                       self._max_seq_len(values, norm_len))

    def ppo_clip_loss(self, logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None,
                      dual_clip=None, agg="token-mean", norm_len=None):
        red = self._agg(agg, "ppo_clip_loss")
        loss_type = "regular" if dual_clip is None else "dual_clip"
        opts = {"policy_loss_type": loss_type, "loss_reduction": red,
                "eps_clip_low": clip_low, "eps_clip_high": clip_low if clip_high is None else clip_high,
                "max_seq_len": self._max_seq_len(logp, norm_len)}
        if dual_clip is not None:
            opts["clip_ratio_c"] = dual_clip
        cfg = _algorithm(**opts)
        fn = _skyrl().pu.PolicyLossRegistry.get(cfg.policy_loss_type)
        # skyrl_train/workers/worker.py:657-664
        loss, _clip_ratio = fn(logp, old_logp, support.per_token(advantages, logp), config=cfg,
                               loss_mask=_numeric(mask, logp), rollout_logprobs=None)
        return loss

    def value_loss(self, values, old_values, returns, mask, clip=None, agg="token-mean",
                   norm_len=None):
        support.honour(self, "agg", agg, "value_loss",
                       why="the critic loss always reduces as sequence_mean (each row's token "
                           "mean, then the batch mean), whatever loss_reduction says ("
                           + _at(PU, 195) + ")")
        cfg = _algorithm(value_clip=clip)
        # skyrl_train/workers/worker.py:926-932
        loss, _clipfrac = _skyrl().pu.ppo_critic_loss(values, old_values, returns, config=cfg,
                                                      loss_mask=_numeric(mask, values))
        return loss

    # --- log-probabilities -------------------------------------------------------------------

    def token_logprobs(self, logits, tokens):
        return _skyrl().tu.logprobs_from_logits(logits, tokens)


# --- declarations (lines of the installed skyrl-train 0.3.1) ------------------------------------

SHIMS: dict = {}       # none: every call is skyrl's own, with translated conventions only

def _padding(estimator: str, line: int) -> dict:
    code = {88: "masked_mean's tensor * mask", 899: "loss * loss_mask"}[line]
    why = support.masks_by_multiplication(_at(PU, line), code=code, reaches="the loss")
    return {f"{estimator}/padding-{fill}": why for fill in ("inf", "nan")}


#: compute_gae_advantage_return whitens its advantages (exact-advantage and the GAE edge checks)
GAE_WHITENS = ("whitens the advantages over the batch (masked_whiten) before returning them, so "
               "they are not the GAE advantages: the returns agree (" + _at(PU + ":1025") + ")")
#: compute_approx_kl's clamps (kl_estimate/large-log-ratios, and beyond +-20)
KL_CLAMP = support.clamps("k3's log-ratio and estimate", "[-20, 20] and [-10, 10]", _at(PU, "118-121"))
#: _safe_exp_delta's clamp of the PPO log-ratio
PPO_LOG_RATIO_CLAMP = support.clamps(
    "the log-ratio of the policy loss before exp (_safe_exp_delta(..., clip=20.0))", "[-20, 20]",
    _at(PU, "551, :573"),
    "where the policies drifted apart the ratio stops at e^20 and the token's gradient is 0: at "
    "a log-ratio of 25 with advantage -0.5 the token's loss is 2.42583e+08 instead of "
    "3.60024e+10, with gradient 0 instead of 3.60024e+10")
#: _safe_exp_delta's float32 exp: a float64 loss carries float32 rounding
PPO_RATIO_FLOAT32 = ("_safe_exp_delta exponentiates the log-ratio in float32 "
                     "(delta.to(torch.float32)) and casts the ratio back to the input's dtype, so a "
                     "float64 loss and its gradient carry float32 rounding (" + _at(PU, "551, :573")
                     + ")")

DEVIATIONS = {
    # GAE
    "gae/matches-reference": "ignores the mask in the recursion (the value after the last real "
        "token is the padded entry values[:, t + 1], not 0) and whitens the advantages over the "
        "batch, padded entries not zeroed (" + _at(PU + ":1018") + "; " + _at(PU + ":1025") + ")",
    "gae/exact-advantage-with-true-values": GAE_WHITENS,
    "gae/lam-zero-gives-td-error": GAE_WHITENS,
    "gae/lam-one-gives-return-minus-value": GAE_WHITENS,
    "gae/gamma-zero-gives-reward-minus-value": GAE_WHITENS,
    "gae/gradient-matches-reference": support.no_grad("rewards or values", _at(PU, 1012)),
    "gae/padding-1e30": "reads padded values and rewards: the recursion runs over the whole "
        "padded width, nextvalues = values[:, t + 1] (" + _at(PU + ":1018") + ")",
    "gae/padding-inf": "reads padded values and rewards in the recursion over the whole padded "
        "width, so inf reaches the real tokens (" + _at(PU + ":1018") + ")",
    "gae/padding-nan": "reads padded values and rewards in the recursion over the whole padded "
        "width, so NaN reaches the real tokens (" + _at(PU + ":1018") + ")",
    "gae/rejects-lam-outside-unit-interval": support.no_validation("lambd", _at(PU, 999)),
    "gae/rejects-row-without-real-token": support.no_validation(
        "the mask", _at(PU, 999), "a row without a real token is processed"),
    # returns (REINFORCE++)
    "discounted_returns/matches-reference": "returns at padded positions are the padded rewards "
        "(plus the discounted tail), not 0: returns[:, t] is stored before the mask resets the "
        "running return (" + _at(PU + ":935-937") + ")",
    "discounted_returns/gradient-matches-reference": support.no_grad("the rewards", _at(PU, 929)),
    "discounted_returns/padding-1e30": "returns at padded positions are the padded rewards, not 0 "
        "(" + _at(PU + ":935-937") + ")",
    "discounted_returns/padding-inf": "masks by multiplying, running_return * response_mask, so "
        "inf padding becomes NaN and is carried into the real tokens (" + _at(PU + ":937") + ")",
    "discounted_returns/padding-nan": "masks by multiplying, running_return * response_mask, so "
        "NaN padding is carried into the real tokens (" + _at(PU + ":937") + ")",
    "discounted_returns/rejects-gamma-outside-unit-interval": support.no_validation(
        "gamma", _at(PU, 911)),
    "discounted_returns/rejects-integer-rewards": "accepts integer rewards (zeros_like of the "
        "rewards); nothing checks the dtype (" + _at(PU + ":930") + ")",
    # groups
    "group_normalized_advantages/rejects-group-of-one": "a group of one gets mean 0 and std 1, so "
        "its advantage is s / (1 + eps), not an error (" + _at(PU + ":1064-1066") + ")",
    "leave_one_out_advantages/rejects-group-of-one": "a group of one gets advantage 0 (with a "
        "logged warning), not an error (" + _at(PU + ":992") + ")",
    # whitening (the trainer's advantage_batch_normalize)
    "batch_normalized_advantages/matches-reference": "normalize_advantages_dict takes the mean "
        "over every entry, padded ones included, divides the masked sum of squares by the count "
        "(biased variance), and leaves padded outputs non-zero (" + _at(PU + ":142-147") + ")",
    "batch_normalized_advantages/exact-bias-shrinks-with-batch-size": "the variance divides by "
        "the number of real entries, not by that number minus one (" + _at(PU + ":145") + ")",
    "batch_normalized_advantages/padding-*": "the mean is advantages.mean() over every entry, "
        "padded ones included, so padding moves every output (" + _at(PU + ":142") + ")",
    "batch_normalized_advantages/rejects-fewer-than-two-real-entries": support.no_validation(
        "the count of real entries", _at(PU, 140)),
    # KL
    "kl_estimate/gradient-matches-reference": "compute_approx_kl is decorated with "
        "@torch.no_grad(), so no gradient reaches logp, also where the actor uses it as its KL "
        "loss (" + _at(PU + ":91") + ")",
    "kl_estimate/exact-loss-gradients": "compute_approx_kl runs under @torch.no_grad(): used as "
        "the actor's KL loss term, its expected gradient is 0 instead of the per-state KL "
        "gradient (" + _at(PU + ":91") + "; workers/worker.py:680)",
    "kl_estimate/large-log-ratios": KL_CLAMP,
    "kl_estimate/log-ratios-beyond-20": KL_CLAMP,
    "kl_estimate/padding-inf": "masks by multiplying, kld * loss_mask, which keeps the NaN of "
        "inf - inf at padded positions (" + _at(PU + ":126") + ")",
    "kl_estimate/padding-nan": "masks by multiplying, kld * loss_mask, which keeps NaN at padded "
        "positions (" + _at(PU + ":126") + ")",
    "kl_estimate/rejects-mixed-float-dtypes": support.type_promotion(_at(PU, 107)),
    # critic (always sequence_mean, so in every variant: masked_mean)
    **_padding("value_loss", 88),
    # losses and reduction, in every reduction
    "aggregate/rejects-mask-with-hole": support.no_validation(
        "the mask in reduce_loss", _at(PU, 881),
        "a mask whose real tokens are not a prefix is reduced as given"),
    "ppo_clip_loss/log-ratios-beyond-20": PPO_LOG_RATIO_CLAMP,
    "ppo_clip_loss/matches-reference": PPO_RATIO_FLOAT32,
    "ppo_clip_loss/gradient-equals-policy-gradient-at-old-policy": PPO_RATIO_FLOAT32,
    "ppo_clip_loss/gradient-zero-when-clipped": PPO_RATIO_FLOAT32,
    "ppo_clip_loss/dual-clip-inside-clip-range": PPO_RATIO_FLOAT32,
    "ppo_clip_loss/rejects-dual-clip-at-most-one": support.no_validation(
        "clip_ratio_c", _at(PU, 580), "a value <= 1 is applied as given"),
    "value_loss/rejects-shape-mismatch": "without a value clip ppo_critic_loss never reads "
        "old_values, so its shape is not checked (" + _at(PU, "185-193") + ")",
}

# deviations that depend on the variant's reduction (its capabilities["agg"]): token_mean and
# sequence_mean reduce through masked_mean, seq_mean_token_sum_norm sums loss * loss_mask itself
DEVIATIONS_BY_REDUCTION = (
    support.when("agg", ["token-mean", "seq-mean-token-mean"],
                 {**_padding("aggregate", 88), **_padding("ppo_clip_loss", 88)}),
    support.when("agg", "seq-mean-token-sum-norm",
                 {**_padding("aggregate", 899), **_padding("ppo_clip_loss", 899)}),
)


# --- training steps (conformance/adapters/skyrl_train.py runs them) ------------------------------

_W = "skyrl_train/workers/worker.py"
_T = "skyrl_train/trainer.py"
_MW = "skyrl_train/model_wrapper.py"

TRAIN_SHIMS = {
    "train_step": "skyrl's distributed strategy is replaced by one whose backward is "
        "loss.backward() and whose optimizer_step does nothing; Ray is not started: the policy and "
        "reference workers (PolicyWorkerBase, RefWorkerBase) are built without their actor "
        "__init__, with the config, the wrapped model and mesh_rank.dp_size = 1 set, and "
        "PolicyWorkerBase.ppo_train runs as is (" + _at(_W, "716-802") + ")",
    "train_step (cpu)": "while the step runs torch.cuda.current_device returns 'cpu' (forward_backward "
        "and the reference's _forward_micro_batch move each micro-batch to it, " + _at(_W, "630, :1079") + ", which raises on a CPU build) and "
        "torch.distributed.barrier does nothing (" + _at(_W, 792) + "); autocast(device_type="
        "'cuda', bf16) is then inert: the model runs in float32",
    "train_step (imports)": "the trainer, worker and model-wrapper modules import datasets, fastapi, "
        "peft, flash-attn, skyrl_gym and torchdata, which a CPU install lacks: stand-in modules "
        "answer for those packages while they import (their names are inert classes that raise "
        "when called); flash_attn.ops is left missing so that logprobs_from_logits takes its "
        "own fallback (" + _at("skyrl_train/utils/torch_utils.py", "22-27, :143-144") + ")",
    "train_step (rollout)": "the rollout is the batch: action_log_probs, which "
        "fwd_logprobs_values_reward takes from the policy worker's forward, are the batch's "
        "old_logp; the reference log-probs are RefWorkerBase.forward's (" + _at(_T, "876-998")
        + "); each sequence's score is put at its last response token as "
        "postprocess_generator_output does (" + _at(_T, "700-703") + "), the tensors laid out "
        "as convert_to_training_input lays them (prompts left-padded, responses right-padded, "
        + _at("skyrl_train/dataset/preprocess.py", "45-50") + "); uids are the group ids",
    "train_step (micro-batches)": "trainer.micro_train_batch_size_per_gpu = B / grad_accum and "
        "policy_mini_batch_size = B / n_samples_per_prompt, so that ppo_train's BatchIterator "
        "cuts grad_accum contiguous micro-batches and accumulation_steps = grad_accum ("
        + _at(_W, "716-741") + "); max_seq_len is norm_len, or the completion width when "
        "norm_len is None (skyrl's default is max_input_length + max_generate_length, "
        "skyrl_train/utils/utils.py:278)",
}

#: compute_approx_kl is @torch.no_grad(): the KL loss has no gradient
TRAIN_KL_NO_GRAD = ("the KL loss is compute_approx_kl(action_log_probs, base_action_log_probs) and "
    "compute_approx_kl is decorated with @torch.no_grad(), so the KL term adds its value to the "
    "loss but nothing to the gradient (" + _at(PU, "91-92") + "; " + _at(_W, "679-687") + ")")
#: the reference worker's forward passes no temperature
TRAIN_REF_TEMPERATURE = ("the reference worker's forward calls the model wrapper without a "
    "temperature (" + _at(_W, 1085) + "), so the reference log-probs are at temperature 1 "
    "while the policy's are divided by generator.sampling_params.temperature (" + _at(_W, 650)
    + ", " + _at(_MW, 333) + ")")
#: each micro-batch's token mean divided by the number of micro-batches
TRAIN_GRAD_ACCUM = ("with loss_reduction token_mean each micro-batch's policy loss is the token "
    "mean over that micro-batch's real tokens (" + _at(PU, 889) + "), then divided by "
    "accumulation_steps (" + _at(_W, 692) + "): a per-micro-batch token mean averaged over "
    "micro-batches, which weights micro-batches with fewer real tokens more")
#: NaN at padded old log-probs
TRAIN_NAN = ("the policy loss is computed at padded positions from the old log-probs and "
    "reduce_loss masks it by multiplying with the loss mask ({}), so NaN at a padded old "
    "log-prob makes the loss and every gradient NaN (skyrl's own action_log_probs are finite "
    "at padding)")
TRAIN_NAN_REWARD = (" ; with the KL in the reward, apply_reward_kl_penalty's compute_approx_kl "
    "masks its estimate by multiplying too (" + _at(PU, 126) + ")")

#: measured by rlconform certify (tests/test_adapter_skyrl.py measures them again)
TRAIN_DEVIATIONS_MEASURED = {
    "token_mean": {
        "grpo/step-matches-recipe-*": "grpo, beta 0.04: gradient off by 9.76e-03 relative L2 on "
                                      "gpt2, 2.19e-02 on llama",
        "grpo/temperature": "grpo, temperature 0.7, beta 0.1: gradient off by 3.55e-02",
        "grpo/config-honoured": "grpo, kl_kind = k2, beta 0.1 (on Llama): gradient off by 4.88e-02",
        "grpo/grad-accum": "grpo, grad_accum 2: loss -0.0670139 instead of -0.075493",
        "dapo/grad-accum": "dapo, grad_accum 2: loss -0.0777928 instead of -0.0864181",
        "dapo/temperature": "dapo, temperature 0.7, beta 0.1: gradient off by 3.29e-02",
        "dapo/config-honoured": "dapo, beta = 0.05 (on Llama): gradient off by 2.65e-02",
        "rloo/grad-accum": "rloo, grad_accum 2: loss -0.201961 instead of -0.223464",
        "rloo/temperature": "rloo, temperature 0.7, beta 0.1: gradient off by 3.20e-02",
        "reinforce_pp/grad-accum": "reinforce_pp, grad_accum 2: loss 0.048904 instead of 0.0354738",
        "reinforce_pp/temperature": "reinforce_pp, temperature 0.7, beta 0.1: gradient off by 1.60e-02",
    },
    "sequence_mean": {
        "grpo/step-matches-recipe-*": "grpo, beta 0.04: gradient off by 9.51e-03 relative L2 on "
                                      "gpt2, 1.65e-02 on llama",
        "grpo/temperature": "grpo, temperature 0.7, beta 0.1: gradient off by 3.46e-02",
        "grpo/config-honoured": "grpo, kl_kind = k2, beta 0.1 (on Llama): gradient off by 3.63e-02",
    },
    "seq_mean_token_sum_norm": {
        "grpo/step-matches-recipe-*": "grpo, beta 0.04: gradient off by 9.76e-03 relative L2 on "
                                      "gpt2, 2.19e-02 on llama",
        "grpo/temperature": "grpo, temperature 0.7, beta 0.1: gradient off by 3.55e-02",
        "grpo/config-honoured": "grpo, kl_kind = k2, beta 0.1 (on Llama): gradient off by 4.88e-02",
        "dr_grpo/step-matches-recipe-*": "dr_grpo, beta 0.04: gradient off by 1.00e-02 relative L2 "
                                         "on gpt2, 2.00e-02 on llama",
        "dr_grpo/temperature": "dr_grpo, temperature 0.7, beta 0.1: gradient off by 3.64e-02",
        "dr_grpo/config-honoured": "dr_grpo, kl_kind = k2, beta 0.1 (on Llama): gradient off by 4.42e-02",
    },
}


def train_declarations(reduction: str) -> dict:
    """The train_step deviations of the variant with ``loss_reduction`` = ``reduction``."""
    measured = TRAIN_DEVIATIONS_MEASURED[reduction]
    nan_line = _at(PU, 899) if reduction == "seq_mean_token_sum_norm" else _at(PU, 88)
    out = {}
    for a in train_capabilities(reduction)["algorithms"]:
        kl_in_loss = a in ("grpo", "dr_grpo", "dapo")       # the checks' default placement
        out[f"{a}/nan-old-logp-ignored"] = TRAIN_NAN.format(nan_line) + (
            "" if kl_in_loss else TRAIN_NAN_REWARD)
        if a != "reinforce_pp":
            out[f"{a}/kl-term-exact"] = (TRAIN_KL_NO_GRAD + ": the gradient of step(beta 1) - "
                                         "step(beta 0) is 0 (relative L2 error 1.0, cosine 0)")
        if f"{a}/step-matches-recipe-*" in measured:
            out[f"{a}/step-matches-recipe-*"] = TRAIN_KL_NO_GRAD + " (" + measured[f"{a}/step-matches-recipe-*"] + ")"
        why = [TRAIN_REF_TEMPERATURE] + ([TRAIN_KL_NO_GRAD] if kl_in_loss else [])
        out[f"{a}/temperature"] = "; and ".join(why) + " (" + measured[f"{a}/temperature"] + ")"
        if f"{a}/config-honoured" in measured:
            out[f"{a}/config-honoured"] = (TRAIN_KL_NO_GRAD + ", so the KL options (kl_kind, "
                                           "beta), moved with beta > 0, do not reach the "
                                           "gradient (" +
                                           measured[f"{a}/config-honoured"] + ")")
        if f"{a}/grad-accum" in measured:
            out[f"{a}/grad-accum"] = TRAIN_GRAD_ACCUM + " (" + measured[f"{a}/grad-accum"] + ")"
    return out


def declarations(capabilities: dict) -> dict:
    """A variant's known deviations, from what it honours (its reduction)."""
    return support.declarations(capabilities, DEVIATIONS, *DEVIATIONS_BY_REDUCTION)


Skyrl.shims = {**SHIMS, **TRAIN_SHIMS}

skyrl = Skyrl()
skyrl_sequence_mean = Skyrl("sequence_mean")
skyrl_seq_mean_token_sum_norm = Skyrl("seq_mean_token_sum_norm")
VARIANTS = (skyrl, skyrl_sequence_mean, skyrl_seq_mean_token_sum_norm)
