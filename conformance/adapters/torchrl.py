"""Adapters for torchrl 0.14.1 (tensordict 0.14.x): its value functionals and its LLM objectives.

What is mapped, and to which torchrl code:

- ``gae``: ``torchrl.objectives.value.functional.generalized_advantage_estimate``, the loop
  version that ``GAE.forward`` calls with its default ``vectorized=None``
  (torchrl/objectives/value/advantages.py:2315-2327).
- ``discounted_returns``: ``torchrl.objectives.value.functional.reward2go``.
- ``group_normalized_advantages`` (``scale="group"`` only): the ``MCAdvantage`` replay-buffer
  transform (torchrl/objectives/llm/grpo.py:1019), constructed as torchrl's GRPO recipes do,
  ``MCAdvantage(grpo_size=G)``, and fed one single-step trajectory per sample through ``inv``.
- ``kl_estimate`` (``kind="k3"`` only): ``torchrl.objectives.llm.k3_kl_token_estimate``.
- ``ppo_clip_loss`` and ``aggregate``: the tensor-level methods of ``GRPOLoss`` / ``DAPO``
  (``_compute_policy_objective`` and ``_aggregate_loss_value``), called on a loss module built
  without an actor network (``actor_network=None`` is the constructor's default); the per-token
  log-weight is formed as ``GRPOLoss._log_weight`` forms it.

Shims (steps torchrl's own losses do right before the call, declared in ``shims``): ``kl_estimate``
fills padded log-probs with 0 before ``k3_kl_token_estimate``, as ``DistillationLoss.forward`` does
(distillation.py:495-496); ``ppo_clip_loss`` narrows the mask to finite ``old_logp`` entries and
zeroes the log-probs outside it, as ``GRPOLoss._log_weight`` does (grpo.py:961-967). Outputs come
back uncast.

Variants (docs/contract.md, "Variants"): ``GRPOLoss(aggregation=...)`` is the switch.
``torchrl`` is ``GRPOLoss()`` with its defaults (``aggregation="token_mean"``);
``torchrl_prompt_mean`` is ``GRPOLoss(aggregation="prompt_mean")``; ``torchrl_dapo`` is the
``DAPO`` class (Clip-Higher over GRPO; same code path, token-mean aggregation).

Each variant declares its aggregation, and what torchrl has no setting for (a dual clip, GRPO
scales other than "group", an ``eps``, KL estimators other than k3), in ``capabilities``; the
known deviations that depend on the aggregation are declared from them.

torchrl is imported lazily: importing this module without torchrl installed works, and the
adapter objects are constructible without it.
"""

from __future__ import annotations

import functools
import inspect

import torch

from conformance.adapters import pins, support

PKG = pins.label("torchrl")
#: the contract's aggregation modes -> GRPOLoss(aggregation=...) (grpo.py:800-815)
AGGREGATION = {"token-mean": "token_mean", "seq-mean-token-mean": "prompt_mean"}
CONTRACT_AGG = {v: k for k, v in AGGREGATION.items()}
#: GRPOLoss's and DAPO's default aggregation in the pinned torchrl (the plain variants'
#: capabilities; tests/test_adapter_torchrl.py checks it against the installed torchrl)
DEFAULT_AGGREGATION = "token_mean"
_GRPO = "torchrl/objectives/llm/grpo.py"
_FUNC = "torchrl/objectives/value/functional.py"
_DIST = "torchrl/objectives/llm/distillation.py"


@functools.lru_cache(maxsize=None)
def _tr():
    """Import torchrl's pieces once, on first use."""
    import tensordict
    import torchrl
    from torchrl.objectives.llm import DAPO, GRPOLoss, MCAdvantage, k3_kl_token_estimate
    from torchrl.objectives.utils import (
        ValueEstimators,
        _validate_clip_epsilon,
        default_value_kwargs,
    )
    from torchrl.objectives.value.functional import (
        generalized_advantage_estimate,
        reward2go,
    )
    return {"torchrl": torchrl, "tensordict": tensordict, "GRPOLoss": GRPOLoss, "DAPO": DAPO,
            "MCAdvantage": MCAdvantage, "k3": k3_kl_token_estimate, "gae": generalized_advantage_estimate,
            "reward2go": reward2go, "ValueEstimators": ValueEstimators,
            "default_value_kwargs": default_value_kwargs,
            "validate_clip": _validate_clip_epsilon}


def _episode_ends(mask: torch.Tensor) -> torch.Tensor:
    """Calling convention: torchrl marks episode ends with done/terminated flags, not a mask.
    A row's response ends (terminates) at its last real token: done[t] = mask[t] & ~mask[t+1]
    (with mask[T] = False). Shape (B, T, 1), time at dim -2 as torchrl's functionals expect."""
    m = mask.bool()
    nxt = torch.cat([m[:, 1:], torch.zeros_like(m[:, :1])], dim=1)
    return (m & ~nxt).unsqueeze(-1)


class _TorchRLBase:
    """Functions shared by every variant (the value functionals, MCAdvantage, k3)."""

    name = "torchrl"
    loss_class = "GRPOLoss"
    aggregation: str | None = None        # None: GRPOLoss's default, read at run time
    framework = pins.framework("torchrl")

    @property
    def capabilities(self) -> dict:
        """This variant's aggregation; no dual clip in GRPOLoss; MCAdvantage divides by the group
        std with a fixed guard (grpo.py:1511); k3 is torchrl's only KL estimator (distillation.py:25)."""
        return {"agg": [CONTRACT_AGG[self.aggregation or DEFAULT_AGGREGATION]], "dual_clip": False,
                "scale": ["group"], "group_normalized_advantages.eps": False, "kl_kind": ["k3"]}

    # --- configuration -------------------------------------------------------------------------
    def _aggregation(self) -> str:
        if self.aggregation is not None:
            return self.aggregation
        sig = inspect.signature(_tr()[self.loss_class].__init__)
        return sig.parameters["aggregation"].default

    def _canonical_agg(self) -> str:
        return CONTRACT_AGG[self._aggregation()]

    def _agg(self, agg, function: str) -> str:
        """``agg`` if this variant aggregates so; another contract mode is another variant, and
        a string that is no contract mode has no counterpart in GRPOLoss(aggregation=...)."""
        return support.translate(self, "agg", agg, AGGREGATION, function,
                                 why=f"GRPOLoss(aggregation=...) fixes one mode per loss module "
                                     f"({_GRPO}:800-815, {PKG})")

    @functools.lru_cache(maxsize=64)               # noqa: B019  (a few clip settings per run)
    def _loss_module(self, clip_low: float, clip_high: float):
        cls = _tr()[self.loss_class]
        kwargs = {} if self.aggregation is None else {"aggregation": self.aggregation}
        clip = clip_low if clip_high == clip_low else (clip_low, clip_high)
        return cls(clip_epsilon=clip, **kwargs)    # actor_network=None: tensor-level use only

    def framework_defaults(self) -> dict:
        t = _tr()
        sig = inspect.signature(t[self.loss_class].__init__)
        low, high = t["validate_clip"](sig.parameters["clip_epsilon"].default)
        beta = sig.parameters["kl_to_ref_coeff"].default
        gae_kw = t["default_value_kwargs"](t["ValueEstimators"].GAE)
        mc = inspect.signature(t["MCAdvantage"].__init__).parameters["grpo_size"].default
        return {
            "clip_low": low, "clip_high": high,
            "kl_beta": beta,
            "kl_estimator": self._kl_kind(),
            "kl_in": "loss" if "kl_to_ref_coeff" in sig.parameters else None,
            "gae_lambda": gae_kw.get("lmbda"), "gamma": gae_kw.get("gamma"),
            "group_size": None if mc is inspect.Parameter.empty else mc,
            "loss_agg": CONTRACT_AGG.get(self._aggregation(), self._aggregation()),
            "adv_eps": None,   # MCAdvantage has no eps setting (a fixed std.clamp_min(1e-6))
        }

    def _kl_kind(self) -> str | None:
        """Which estimator GRPOLoss._kl_to_ref computes, found by calling it on one token."""
        l = 0.7                                    # log pi - log pi_ref
        td = _tr()["tensordict"].TensorDict(
            {"_cur_log_prob": torch.tensor([[l]], dtype=torch.float64)}, [1])
        _, kl = self._loss_module(0.2, 0.2)._kl_to_ref(
            td, ref_log_prob=torch.zeros(1, 1, dtype=torch.float64), coeff=1.0)
        return support.kl_kind(float(kl), l, tol=1e-12)

    # --- returns and advantages ----------------------------------------------------------------
    def discounted_returns(self, rewards, mask, gamma=1.0):
        # reward2go takes [B, T, 1] (time at -2) and episode ends as `done` flags.
        done = _episode_ends(mask)
        out = _tr()["reward2go"](rewards.unsqueeze(-1), done, gamma)
        return out.squeeze(-1)

    def gae(self, rewards, values, mask, gamma=1.0, lam=0.95):
        # Calling convention: torchrl's GAE takes [B, T, 1] tensors, a separate next_state_value
        # and done/terminated flags instead of a mask. The response ends at each row's last real
        # token, which is a terminal state (done = terminated = True there). next_state_value is
        # V shifted by one step, with V(terminal) = 0 after the last real token (docs/contract.md: "V after
        # the last real token is 0"); torchrl multiplies it by (1 - terminated) there anyway.
        done = _episode_ends(mask)
        V = values.unsqueeze(-1)
        r = rewards.unsqueeze(-1)
        V_next = torch.cat([V[:, 1:], torch.zeros_like(V[:, :1])], dim=1)
        V_next = torch.where(done, torch.zeros_like(V_next), V_next)
        adv, target = _tr()["gae"](gamma, lam, V, V_next, r, done, done.clone())
        return adv.squeeze(-1), target.squeeze(-1)

    def group_normalized_advantages(self, scores, group_ids, scale="group", eps=1e-6):
        support.translate(self, "scale", scale, {"group": None}, "group_normalized_advantages",
                          why=f"MCAdvantage normalises by the group std only ({_GRPO}:1511, {PKG})")
        support.honour(self, "eps", eps, "group_normalized_advantages", default=1e-6,
                       why=f"MCAdvantage's std guard is a fixed clamp_min(1e-6) ({_GRPO}:1511, {PKG})")
        t = _tr()
        TensorDict = t["tensordict"].TensorDict
        B = scores.shape[0]
        out = [None] * B
        # Layout: torchrl's GRPO recipes build MCAdvantage(grpo_size=G), which releases a group
        # once G trajectories with its id have arrived. Groups here may differ in size, so each
        # group gets its own transform with grpo_size = that group's size (one call per group;
        # what MCAdvantage computes for a completed group does not depend on other groups).
        # Each sample is one single-step, done trajectory (an LLM response is one step of
        # torchrl's ChatEnv); `index` carries its position back from the group MCAdvantage writes.
        for gid in torch.unique(group_ids).tolist():
            members = (group_ids == gid).nonzero().reshape(-1).tolist()
            mc = t["MCAdvantage"](grpo_size=len(members), prompt_key="group_id")
            for i in members:
                td = TensorDict({
                    "group_id": group_ids[i:i + 1],
                    "index": torch.tensor([i]),
                    "next": TensorDict({"reward": scores[i].reshape(1, 1),
                                        "done": torch.ones(1, 1, dtype=torch.bool)}, [1]),
                }, [1])
                res = mc.inv(td)
                if res is not None:
                    for j, a in zip(res["index"].reshape(-1).tolist(),
                                    res["advantage"].reshape(-1).unbind(0)):
                        out[j] = a
        if any(o is None for o in out):
            raise RuntimeError("MCAdvantage left a group incomplete")
        return torch.stack(out)

    # --- KL --------------------------------------------------------------------------------------
    def kl_estimate(self, logp, ref_logp, mask=None, kind="k3"):
        support.translate(self, "kl_kind", kind, {"k3": None}, "kl_estimate",
                          why=f"torchrl's only KL estimator is k3_kl_token_estimate ({_DIST}:25, {PKG})")
        if mask is not None:
            # shim (declared): fill padded positions with 0 before the call, as
            # DistillationLoss.forward does right before k3_kl_token_estimate.
            m = mask.bool()
            logp = logp.masked_fill(~m, 0.0)
            ref_logp = ref_logp.detach().masked_fill(~m, 0.0)
        return _tr()["k3"](ref_logp, logp)       # (target_log_prob, log_prob of the sampler)

    # --- losses ------------------------------------------------------------------------------------
    def aggregate(self, values, mask, mode="token-mean", norm_len=None):
        self._agg(mode, "aggregate")
        out = self._loss_module(0.2, 0.2)._aggregate_loss_value(values.unsqueeze(-1), mask.bool())
        return out.reshape(())                    # prompt_mean returns shape (1,)

    def ppo_clip_loss(self, logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None,
                      dual_clip=None, agg="token-mean", norm_len=None):
        support.honour(self, "dual_clip", dual_clip, "ppo_clip_loss",
                       why=f"{self.loss_class}'s objective has no dual clip ({_GRPO}:769-782, {PKG})")
        self._agg(agg, "ppo_clip_loss")
        high = clip_low if clip_high is None else clip_high
        loss = self._loss_module(float(clip_low), float(high))
        # shim (declared): GRPOLoss._log_weight narrows the attention mask to the entries whose
        # behaviour log-prob is finite and sets the current and behaviour log-probs to 0 outside
        # it before forming the log-weight; the loss aggregates over that narrowed mask.
        m = mask.bool() & torch.isfinite(old_logp)
        cur = torch.where(m, logp, torch.zeros((), dtype=logp.dtype))
        prev = torch.where(m, old_logp, torch.zeros((), dtype=old_logp.dtype))
        log_weight = (cur - prev).unsqueeze(-1)                       # [B, T, 1]
        # advantages: (B,) broadcast over tokens, or (B, T); torchrl wants [B, T, 1]
        A = advantages.unsqueeze(-1)
        A = A.unsqueeze(-1).expand(-1, logp.shape[1], 1) if advantages.dim() == 1 else A
        per_token, _ = loss._compute_policy_objective(log_weight, A)
        return loss._aggregate_loss_value(per_token, m).reshape(())


_COMMON_SHIMS = {
    "kl_estimate": "fills padded positions of both log-prob tensors with 0 (masked_fill) before "
                   f"k3_kl_token_estimate, as DistillationLoss.forward does right before its call "
                   f"({_DIST}:495, {PKG})",
    "ppo_clip_loss": "narrows the mask to the entries whose old_logp is finite and sets logp and "
                     "old_logp to 0 outside it (torch.where) before forming the log-weight, the "
                     "narrowed mask also aggregating the loss, as GRPOLoss._log_weight does right "
                     f"before the policy objective ({_GRPO}:961-967, :982, {PKG})",
}

_R2G = (f"reward2go has no mask: the padded tail of a row after its done flag is summed as an "
        f"episode of its own, so padded positions get returns of the padding values instead of 0 "
        f"({_FUNC}:1447, {PKG})")
_GAE_PAD = (f"generalized_advantage_estimate has no mask: padded positions get advantages from the "
            f"padding values instead of 0 ({_FUNC}:171-178, {PKG})")

#: MCAdvantage's std guard (every group value check on float64 samples with a finite std)
_STD_CLAMP = ("MCAdvantage divides by the group std clamped below at 1e-6 (std.clamp_min(1e-6)), not "
              f"by std + eps: advantages differ by a relative 1e-6 / std ({_GRPO}:1511, {PKG})")
#: the discounts of the loop GAE are float32 in a float64 call (lower precision, not another value)
_GAE_FLOAT32 = ("generalized_advantage_estimate multiplies gamma and lmbda * gamma by the int32 flags "
                "(~terminated).int() and (~done).int(), which makes both discounts float32 tensors "
                "inside a float64 computation: gamma = 0.9 enters as 0.8999999761581421, so float64 "
                "advantages and value targets carry the float32 rounding of the discounts "
                f"({_FUNC}:163-164, :170-172, {PKG})")
#: reward2go's geometric series at a discount of 0 (and below its 1e-7 threshold)
_R2G_GAMMA_ZERO = ("reward2go raises IndexError at the valid gamma = 0: _geom_series_like returns a "
                   f"1-D zeros_like for a ratio of 0 ({_FUNC}:197-198) where _custom_conv1d reads the "
                   "filter's shape[-2] (torchrl/objectives/value/utils.py:77), and below its 1e-7 "
                   "threshold, e.g. gamma = 1e-9, the series is empty and rs[0] = 1.0 raises "
                   f"IndexError too ({_FUNC}:202-205); a run with gamma = 0 stops "
                   f"({_FUNC}:1449-1450, {PKG})")
#: reward2go's geometric series is cut one term early
_R2G_TRUNCATED = ("reward2go builds its discounts with _geom_series_like, which keeps "
                  "int(log(1e-7) / log(gamma)) terms, so the series is cut where gamma^k is still "
                  "above its 1e-7 threshold: at gamma = 1e-3 the rewards (1, 2, 3) return 1.002 where "
                  f"the contract's return is 1.002003 ({_FUNC}:200-205, {PKG})")
#: GRPOLoss's clip bounds are float32 buffers (DAPO inherits them)
_CLIP_FLOAT32 = ("GRPOLoss keeps clip_epsilon as float32 buffers (torch.tensor(eps)) and clamps the "
                 "float64 log-weight to their float32 log1p (_clip_bounds), so a clipped float64 "
                 "ratio is 1 + eps only to float32 rounding: with clip_high = 0.28 a ratio clipped "
                 "above is 1.2799999924290435 and the loss of one token with A = 0.5 is "
                 "-0.6399999962145217 where the contract's is -0.64 "
                 f"({_GRPO}:536-537, :554-555, :777, {PKG})")

_COMMON_DEVIATIONS = {
    # discounted_returns -> reward2go
    "discounted_returns/matches-reference": _R2G,
    "discounted_returns/gradient-matches-reference":
        "reward2go has no mask: the returns at padded positions depend on the padding rewards, "
        f"so the gradient there is not 0 ({_FUNC}:1447-1450, {PKG})",
    "discounted_returns/padding-*": _R2G,
    "discounted_returns/gamma-zero-gives-rewards": _R2G_GAMMA_ZERO,
    "discounted_returns/small-gamma-keeps-every-term": _R2G_TRUNCATED,
    "discounted_returns/rejects-integer-rewards":
        "reward2go accepts integer rewards and returns integer returns; it checks only that "
        f"reward and done share a shape ({_FUNC}:1428, {PKG})",
    # gae -> generalized_advantage_estimate (the loop GAE.forward calls by default)
    "gae/matches-reference": _GAE_PAD,
    "gae/gradient-matches-reference":
        "generalized_advantage_estimate has no mask: advantages at padded positions depend on "
        f"the padding rewards and values, so the gradient there is not 0 ({_FUNC}:171-178, {PKG})",
    "gae/padding-*":
        "generalized_advantage_estimate has no mask: padded positions get advantages from the "
        "padding values, and NaN/inf there reach the real tokens through prev_advantage * "
        f"discount with discount = 0 at the done token (NaN * 0) ({_FUNC}:174, {PKG})",
    **dict.fromkeys(("gae/lam-zero-gives-td-error", "gae/lam-one-gives-return-minus-value",
                     "gae/exact-advantage-with-true-values"), _GAE_FLOAT32),
    "gae/rejects-lam-outside-unit-interval":
        f"generalized_advantage_estimate does not check lmbda ({_FUNC}:120-178, {PKG})",
    "gae/rejects-row-without-real-token":
        "generalized_advantage_estimate takes done flags, not a mask: a row of padding has no "
        f"done flag and is estimated as an unfinished trajectory ({_FUNC}:163-176, {PKG})",
    # group_normalized_advantages -> MCAdvantage
    **dict.fromkeys(("group_normalized_advantages/matches-reference",
                     "group_normalized_advantages/std-is-per-group",
                     "group_normalized_advantages/exact-std-normalisation-bias"), _STD_CLAMP),
    "group_normalized_advantages/rejects-group-of-one":
        "MCAdvantage takes a group of one (it checks grpo_size >= 2 only with trajectory_return, "
        f"{_GRPO}:1165): the std of one reward is NaN and clamp_min(1e-6) keeps it, so the "
        f"advantage is NaN, not an error ({_GRPO}:1510-1511, {PKG})",
    # ppo_clip_loss -> GRPOLoss._compute_policy_objective
    **dict.fromkeys(("ppo_clip_loss/matches-reference", "ppo_clip_loss/log-ratios-beyond-20"),
                    _CLIP_FLOAT32),
    # kl_estimate -> k3_kl_token_estimate
    "kl_estimate/rejects-mixed-float-dtypes":
        "k3_kl_token_estimate checks only that the shapes agree and lets torch promote mixed "
        f"float dtypes ({_DIST}:67-72, {PKG})",
}

_PROMPT_MEAN_NAN = support.masks_by_multiplication(
    f"{_GRPO}:807, {PKG}", "the per-token loss in GRPOLoss._aggregate_loss_value (prompt_mean)",
    "value * mask_exp", "the loss")

# deviations that depend on the variant's aggregation (its capabilities["agg"])
DEVIATIONS_BY_AGGREGATION = (
    support.when("agg", "token-mean", {
        "aggregate/rejects-mask-with-hole":
            "GRPOLoss._aggregate_loss_value (token_mean) takes any boolean mask: a mask whose real "
            f"tokens are not a prefix is averaged as given ({_GRPO}:814, {PKG})",
    }),
    support.when("agg", "seq-mean-token-mean", {
        "aggregate/rejects-mask-with-hole":
            "GRPOLoss._aggregate_loss_value (prompt_mean) takes any mask: a mask whose real tokens "
            f"are not a prefix is averaged as given ({_GRPO}:804-810, {PKG})",
        "aggregate/padding-nan": _PROMPT_MEAN_NAN,
        "aggregate/padding-inf": _PROMPT_MEAN_NAN,
        "ppo_clip_loss/padding-nan": _PROMPT_MEAN_NAN,
        "ppo_clip_loss/padding-inf": _PROMPT_MEAN_NAN,
    }),
)


class _Declared(_TorchRLBase):
    shims = dict(_COMMON_SHIMS)
    #: where torchrl tracks a declared deviation (the pull request that lets GAE take a validity
    #: mask for right-padded batches)
    upstream = {"gae/matches-reference": "https://github.com/pytorch/rl/pull/4404",
                "gae/padding-*": "https://github.com/pytorch/rl/pull/4404"}

    @property
    def known_deviations(self) -> dict:
        return support.declarations(self.capabilities, _COMMON_DEVIATIONS, *DEVIATIONS_BY_AGGREGATION)


class TorchRL(_Declared):
    """torchrl's defaults: GRPOLoss() (aggregation='token_mean', clip_epsilon=0.2)."""
    name = "torchrl"


class TorchRLPromptMean(_Declared):
    """GRPOLoss(aggregation='prompt_mean'): per-sample token mean, then mean over samples."""
    name = "torchrl-prompt_mean"
    aggregation = "prompt_mean"


class TorchRLDapo(_Declared):
    """torchrl.objectives.llm.DAPO (Clip-Higher over GRPO): same code path as GRPOLoss."""
    name = "torchrl-dapo"
    loss_class = "DAPO"


torchrl = TorchRL()
torchrl_prompt_mean = TorchRLPromptMean()
torchrl_dapo = TorchRLDapo()
