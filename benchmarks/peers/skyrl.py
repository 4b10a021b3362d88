"""skyrl-train 0.3.1's own estimator code, as the benchmark times it (benchmarks/peers/__init__.py).

skyrl-train's math lives in ``skyrl_train/utils/ppo_utils.py`` (loaded by path with the
``training_batch.py`` it imports, as the adapter loads it: ``conformance.adapters.skyrl._skyrl``)
and ``skyrl_train/utils/torch_utils.py``; ``kl_penalized_rewards`` is a method of the trainer,
``RayPPOTrainer.apply_reward_kl_penalty``, reached through the trainer module as the adapter's
training step imports it (``conformance.adapters.skyrl_train._sk``: stand-ins for the packages a
CPU install lacks, present only while it imports) and called on a plain host object.

What is prepared before the timed call (what skyrl's trainer and workers have in hand): masks as
float tensors (skyrl builds its ``loss_mask`` with ``dtype=torch.float``, dataset/preprocess.py),
the ``trainer.algorithm`` DictConfig of skyrl's ``ppo_base_config.yaml`` with the benchmark's
options set, per-token rewards with each sequence's score at its last response token (as
``postprocess_generator_output`` puts it, trainer.py:700-703) for the outcome estimators, the
samples' group ids as the trainer's ``uids`` (a list of str) with the groups contiguous, and the
``TrainingInputBatch`` the trainer method reads.
"""

from __future__ import annotations

import torch

from benchmarks.peers import Entry

FRAMEWORK = "skyrl"
_VERSION = "skyrl-train 0.3.1"
_PU = "skyrl_train/utils/ppo_utils.py"
_TU = "skyrl_train/utils/torch_utils.py"
_T = "skyrl_train/trainer.py"


def _src(path: str, line, note: str = "") -> str:
    return f"{path}:{line} ({_VERSION})" + (f"; {note}" if note else "")


def _s():
    from conformance.adapters.skyrl import _skyrl
    return _skyrl()


def available() -> bool:
    """skyrl's ppo_utils.py and torch_utils.py load (the package ``__init__`` is not run)."""
    try:
        _s()
        return True
    except Exception:                    # noqa: BLE001  (any failure: the framework is unavailable)
        return False


def _algorithm(**overrides):
    from conformance.adapters.skyrl import _algorithm as algorithm
    return algorithm(**overrides)


def _fmask(kw, like):
    return kw["mask"].to(like.dtype)


def _detached(kw: dict) -> dict:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _refimpl():
    import refimpl
    return refimpl


def _last_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) rewards: each row's score at its last real token, 0 elsewhere (trainer.py:700-703)."""
    B, T = mask.shape
    rewards = torch.zeros(B, T, dtype=scores.dtype, device=scores.device)
    last = mask.long().sum(-1) - 1
    rewards[torch.arange(B, device=scores.device), last] = scores
    return rewards


def _masked_whiten_expected(A: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """masked_whiten (ppo_utils.py:169-175): refimpl's whitening on the real entries (same
    formula: unbiased variance, eps 1e-8 inside the square root), and the padded entries shifted
    and scaled by the same statistics instead of 0."""
    m = mask.bool()
    real = _refimpl().batch_normalized_advantages(A, m, eps=1e-8)
    mu = A[m].mean()
    var = A[m].var(unbiased=True)
    return torch.where(m, real, (A - mu) * torch.rsqrt(var + 1e-8))


# --- returns and advantages (skyrl_train/trainer.py:771-781 calls them so) ---------------------------

def _estimate(name: str, rewards, mask, index=None, values=None, **options):
    pu = _s().pu
    cfg = _algorithm(advantage_estimator=name, **{k: v for k, v in options.items() if k != "epsilon"})
    extra = {"epsilon": options["epsilon"]} if "epsilon" in options else {}
    return lambda: pu.compute_advantages_and_returns(
        token_level_rewards=rewards, response_mask=mask, index=index, adv_estimator=name,
        config=cfg, values=values, gamma=cfg.gamma, lambd=cfg.lambd,
        grpo_norm_by_std=cfg.grpo_norm_by_std, **extra)


def _prepare_gae(kw):
    r = kw["rewards"]
    return _estimate("gae", r, _fmask(kw, r), values=kw["values"], gamma=kw["gamma"],
                     lambd=kw["lam"])


def _expected_gae(kw):
    kw = _detached(kw)
    r, v, m = kw["rewards"], kw["values"], kw["mask"].bool()
    A, ret = _refimpl().gae(r, v, torch.ones_like(m), kw["gamma"], kw["lam"])
    return _masked_whiten_expected(A, m), ret


def _prepare_returns(kw):
    r = kw["rewards"]
    return _estimate("reinforce++", r, _fmask(kw, r), gamma=kw["gamma"])


def _returns_of(out, kw):
    return out[1]


def _expected_returns(kw):
    kw = _detached(kw)
    m = kw["mask"].bool()
    return torch.where(m, _refimpl().discounted_returns(kw["rewards"], m, kw["gamma"]), kw["rewards"])


def _groups(kw) -> list[str]:
    ids = kw["group_ids"]
    n = int((ids == ids[0]).sum())
    if not torch.equal(ids, torch.arange(len(ids), device=ids.device) // n):
        raise ValueError("the benchmark's groups are contiguous and of one size")
    return [str(g) for g in ids.tolist()]        # the trainer's uids (trainer.py:603, :774)


def _prepare_grpo(kw):
    if kw["scale"] not in ("group", "none"):
        raise ValueError("grpo_norm_by_std is a bool: scale 'group' or 'none'")
    scores = kw["scores"]
    B = scores.shape[0]
    # one-token responses: the score is the token-level reward of the only (last) token
    rewards = scores.unsqueeze(-1)
    ones = torch.ones(B, 1, dtype=scores.dtype, device=scores.device)
    return _estimate("grpo", rewards, ones, index=_groups(kw), epsilon=kw["eps"],
                     grpo_norm_by_std=kw["scale"] == "group")


def _prepare_rloo(kw):
    scores = kw["scores"]
    B = scores.shape[0]
    rewards = scores.unsqueeze(-1)
    ones = torch.ones(B, 1, dtype=scores.dtype, device=scores.device)
    return _estimate("rloo", rewards, ones, index=_groups(kw))


def _advantage_column0(out, kw):
    return out[0][:, 0]


def _prepare_whiten(kw):
    f = _s().pu.masked_whiten
    A = kw["advantages"]
    m = _fmask(kw, A)
    return lambda: f(A, m)


def _expected_whiten(kw):
    kw = _detached(kw)
    if kw["eps"] != 1e-8:
        raise ValueError("masked_whiten's eps is the literal 1e-8")
    return _masked_whiten_expected(kw["advantages"], kw["mask"])


# --- KL ----------------------------------------------------------------------------------------------

def _prepare_kl(kw):
    f = _s().pu.compute_approx_kl
    logp, ref, kind = kw["logp"], kw["ref_logp"], kw["kind"]
    m = _fmask(kw, logp)
    return lambda: f(logp, ref, loss_mask=m, kl_estimator_type=kind)   # workers/worker.py:680-685


def _prepare_kl_rewards(kw):
    """``RayPPOTrainer.apply_reward_kl_penalty`` (trainer.py:1000-1054) on the trainer's batch:
    token-level ``rewards`` (the score at the last token), ``action_log_probs``,
    ``base_action_log_probs`` and the float ``loss_mask``; the coefficient is
    ``trainer.algorithm.kl_loss_coef`` (no adaptive KL controller)."""
    from types import SimpleNamespace

    from conformance.adapters.skyrl_train import _sk
    sk = _sk()
    logp, ref = kw["logp"], kw["ref_logp"]
    mask = _fmask(kw, logp)
    rewards = _last_token_rewards(kw["scores"], kw["mask"].bool())
    alg = _algorithm(kl_estimator_type=kw["kind"], kl_loss_coef=float(kw["beta"]),
                     use_kl_in_reward=True)
    cfg = sk.OmegaConf.create({"trainer": {"algorithm": sk.OmegaConf.to_container(alg)}})
    host = SimpleNamespace(cfg=cfg, reward_kl_controller=None, all_metrics={})
    data = sk.tb.TrainingInputBatch({"rewards": rewards, "action_log_probs": logp,
                                     "base_action_log_probs": ref, "loss_mask": mask})
    data.metadata = {}
    apply = sk.trainer.RayPPOTrainer.apply_reward_kl_penalty

    def call():
        data["rewards"] = rewards        # the method replaces data["rewards"] (trainer.py:1027)
        return apply(host, data)["rewards"]
    return call


# --- losses ------------------------------------------------------------------------------------------

def _prepare_aggregate(kw):
    if kw["mode"] != "token-mean":
        raise ValueError("aggregate: only token-mean (loss_reduction token_mean) is timed")
    f = _s().pu.reduce_loss
    values = kw["values"]
    m = _fmask(kw, values)
    T = values.shape[-1]
    return lambda: f(values, m, "token_mean", T)


def _prepare_ppo(kw):
    if kw["agg"] != "token-mean" or kw.get("dual_clip") is not None:
        raise ValueError("ppo_clip_loss: only token-mean without dual clip is timed")
    logp, old, A = kw["logp"], kw["old_logp"], kw["advantages"]
    if A.dim() == 1:
        A = A.unsqueeze(-1).expand_as(logp)
    low = float(kw["clip_low"])
    high = low if kw.get("clip_high") is None else float(kw["clip_high"])
    cfg = _algorithm(policy_loss_type="regular", loss_reduction="token_mean", eps_clip_low=low,
                     eps_clip_high=high, max_seq_len=logp.shape[-1])
    fn = _s().pu.PolicyLossRegistry.get(cfg.policy_loss_type)
    m = _fmask(kw, logp)
    # skyrl_train/workers/worker.py:657-664
    return lambda: fn(logp, old, A, config=cfg, loss_mask=m, rollout_logprobs=None)


def _prepare_value(kw):
    f = _s().pu.ppo_critic_loss
    values, old, ret = kw["values"], kw["old_values"], kw["returns"]
    cfg = _algorithm(value_clip=kw["clip"])
    m = _fmask(kw, values)
    return lambda: f(values, old, ret, config=cfg, loss_mask=m)       # workers/worker.py:926-932


def _expected_value(kw):
    kw = _detached(kw)
    return _refimpl().value_loss(kw["values"], kw["old_values"], kw["returns"], kw["mask"],
                                 clip=kw["clip"], agg="seq-mean-token-mean")


def _first(out, kw):
    return out[0]


# --- log-probabilities -------------------------------------------------------------------------------

def _prepare_token_logprobs(kw):
    f = _s().tu.logprobs_from_logits
    logits, tokens = kw["logits"], kw["tokens"]
    return lambda: f(logits, tokens)


def _token_logprobs_source() -> str:
    try:
        flash = bool(_s().tu.FLASH_ATTN_CROSS_ENTROPY_LOSS_AVAILABLE)
    except Exception:                    # noqa: BLE001
        flash = False
    path = ("flash-attn's cross_entropy_loss, :148" if flash
            else "without flash-attn: logprobs_from_logits_v2, a logsumexp per row, :158-168")
    return _src(_TU, 115, f"logprobs_from_logits ({path})")


SKIPPED: dict[str, str] = {
    "policy_gradient_loss": (
        f"no plain policy-gradient loss among skyrl's registered policy losses (regular, "
        f"dual_clip, gspo, sapo, cispo, clip_cov, kl_cov: {_PU}:466-473, {_VERSION})"),
    "bradley_terry_loss": "skyrl-train has no reward-model loss",
    "dpo_loss": "skyrl-train has no DPO loss",
    "ipo_loss": "skyrl-train has no IPO loss",
    "sequence_logprob": "skyrl-train has no sequence log-probability function",
}


def entries() -> dict[str, Entry]:
    return {
        "gae": Entry(
            _prepare_gae, expected=_expected_gae, grad=False,
            deviation=f"compute_gae_advantage_return ignores the mask in its recursion (the value "
                      f"after each row's last real token is the padded values[:, t + 1], "
                      f"{_PU}:1017-1020) and whitens the advantages with masked_whiten, padded "
                      f"entries not zeroed ({_PU}:1025, {_VERSION}): checked against refimpl's "
                      "GAE over the whole padded width, whitened as masked_whiten does",
            source=_src(_PU, 999, "registered estimator 'gae' (compute_gae_advantage_return) "
                                  f"through compute_advantages_and_returns ({_PU}:1087), as "
                                  f"{_T}:771-781 calls it; no gradient (torch.no_grad, :1012)")),
        "discounted_returns": Entry(
            _prepare_returns, canonical=_returns_of, expected=_expected_returns, grad=False,
            deviation=f"returns at padded positions are the padded rewards, not 0: returns[:, t] "
                      f"is stored before the mask resets the running return "
                      f"({_PU}:934-937, {_VERSION})",
            source=_src(_PU, 911, "the returns of registered estimator 'reinforce++' "
                                  "(compute_reinforce_plus_plus_outcome_advantage) through "
                                  f"compute_advantages_and_returns ({_PU}:1087); the call also "
                                  "whitens the advantages (masked_whiten, :939)")),
        "group_normalized_advantages": Entry(
            _prepare_grpo, canonical=_advantage_column0, grad=False,
            source=_src(_PU, 1030, "registered estimator 'grpo' (compute_grpo_outcome_advantage, "
                                   "per-sample Python loops :1061-1076) through "
                                   f"compute_advantages_and_returns ({_PU}:1087), one-token "
                                   "responses, uids as a list of str")),
        "leave_one_out_advantages": Entry(
            _prepare_rloo, canonical=_advantage_column0, grad=False,
            source=_src(_PU, 946, "registered estimator 'rloo' (compute_rloo_outcome_advantage, "
                                  "per-sample Python loops :977-992) through "
                                  f"compute_advantages_and_returns ({_PU}:1087), one-token "
                                  "responses, uids as a list of str")),
        "batch_normalized_advantages": Entry(
            _prepare_whiten, expected=_expected_whiten,
            deviation=f"masked_whiten shifts and scales the padded entries too (they are not 0) "
                      f"({_PU}:169-175, {_VERSION}); real entries as refimpl (unbiased variance, "
                      "eps 1e-8 inside the square root)",
            source=_src(_PU, 169, "masked_whiten; the trainer's advantage_batch_normalize step "
                                  f"is normalize_advantages_dict ({_PU}:131, {_T}:265), whose "
                                  "mean also runs over the padded entries (:142)")),
        "kl_estimate": Entry(
            _prepare_kl, grad=False,
            source=_src(_PU, 92, "compute_approx_kl with its loss_mask (@torch.no_grad, :91)")),
        "kl_penalized_rewards": Entry(
            _prepare_kl_rewards, grad=False,
            source=_src(_T, 1000, "RayPPOTrainer.apply_reward_kl_penalty on a host object and a "
                                  "TrainingInputBatch (compute_approx_kl under @torch.no_grad, "
                                  f"{_PU}:91)")),
        "aggregate": Entry(
            _prepare_aggregate, source=_src(_PU, 881, "reduce_loss, loss_reduction token_mean")),
        "ppo_clip_loss": Entry(
            _prepare_ppo, canonical=_first,
            source=_src(_PU, 557, "registered policy loss 'regular' (ppo_policy_loss), "
                                  "loss_reduction token_mean")),
        "value_loss": Entry(
            _prepare_value, canonical=_first, expected=_expected_value,
            deviation=f"ppo_critic_loss always reduces as sequence_mean (each row's token mean, "
                      f"then the batch mean), whatever loss_reduction says ({_PU}:195, "
                      f"{_VERSION}): checked against refimpl with agg='seq-mean-token-mean'",
            source=_src(_PU, 178, "ppo_critic_loss")),
        "token_logprobs": Entry(_prepare_token_logprobs, source=_token_logprobs_source()),
    }
