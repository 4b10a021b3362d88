"""OpenRLHF 0.11.2's own estimator code, as the benchmark times it (benchmarks/peers/__init__.py).

OpenRLHF cannot be imported whole on a CPU (its package ``__init__`` pulls deepspeed, ray,
flash-attn and vllm), so its math files are loaded by path exactly as the adapter loads them
(``conformance.adapters.openrlhf._fw``): ``models/utils.py``, ``models/loss.py`` and
``trainer/ppo_utils/experience_maker.py``. ``trainer/dpo_trainer.py`` (for ``_get_batch_logps``)
is loaded here the same way, with stand-ins for the two OpenRLHF modules it imports
(``openrlhf.models``: the real ``DPOLoss``; ``openrlhf.utils.distributed_sampler``) registered only
while it loads.

What is prepared before the timed call (what OpenRLHF's trainer has in hand): the loss modules
built once as ``ppo_actor.py`` / ``ppo_critic.py`` / ``dpo_trainer.py`` / ``rm_trainer.py`` build
them, ``action_mask`` as a bool tensor (experience.py:43), the loss normalisers of
``get_loss_batch_info`` (computed once per micro-batch by the actor, ppo_actor.py:274-280), a
``RemoteExperienceMaker`` made by ``__new__`` with the settings ``compute_advantages_and_returns``
reads, and the scores promoted to at least float32 (experience_maker.py:244).

Not timed: ``LogExpLoss`` (loss.py:316-326, the reward model's non-default ``--model.loss_type``;
``bradley_terry_loss`` times the default ``PairWiseLoss``) and ``policy_loss_type="gspo"``.
"""

from __future__ import annotations

import functools
import sys

import torch

from benchmarks.peers import Entry

FRAMEWORK = "openrlhf"
_VERSION = "openrlhf 0.11.2"
_U = "openrlhf/models/utils.py"
_L = "openrlhf/models/loss.py"
_EM = "openrlhf/trainer/ppo_utils/experience_maker.py"
_DPO = "openrlhf/trainer/dpo_trainer.py"


def _src(path: str, line, note: str = "") -> str:
    return f"{path}:{line} ({_VERSION})" + (f"; {note}" if note else "")


def _fw():
    from conformance.adapters.openrlhf import _fw as load
    return load()


def available() -> bool:
    """OpenRLHF's math files load (the package is installed; nothing is imported whole)."""
    try:
        _fw()
        _dpo_trainer()
        return True
    except Exception:                    # noqa: BLE001  (any failure: the framework is unavailable)
        return False


@functools.lru_cache(maxsize=None)
def _dpo_trainer():
    """``DPOTrainer`` from ``trainer/dpo_trainer.py``, loaded by path with stand-ins for the two
    OpenRLHF modules it imports, present in ``sys.modules`` only while it loads."""
    from conformance.adapters import openrlhf as adapter
    fw = adapter._fw()
    temporary = {
        "openrlhf.models": adapter._stand_in("openrlhf.models", DPOLoss=fw.loss.DPOLoss),
        "openrlhf.utils.distributed_sampler": adapter._stand_in(
            "openrlhf.utils.distributed_sampler",
            DistributedSampler=type("DistributedSampler", (), {})),
    }
    saved = {k: sys.modules.get(k) for k in temporary}
    try:
        sys.modules.update(temporary)
        module = adapter._load("_rlconform_bench_openrlhf_dpo_trainer",
                               fw.root / "trainer" / "dpo_trainer.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module.DPOTrainer


def _batch_info(mask: torch.Tensor) -> dict:
    from conformance.adapters.openrlhf import _batch_info as info
    return info(mask)


def _clip_range() -> tuple:
    from conformance.adapters.openrlhf import _ppo_default
    return tuple(_ppo_default("--reward.clip_range"))


def _detached(kw: dict) -> dict:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _refimpl():
    import refimpl
    return refimpl


# --- KL ---------------------------------------------------------------------------------------------

def _prepare_kl(kw):
    f = _fw().utils.compute_approx_kl
    logp, ref, kind = kw["logp"], kw["ref_logp"], kw["kind"]
    # as experience_maker.py:206-210 calls it (unbiased_gradient off: the CLI default)
    return lambda: f(logp, ref, kl_estimator=kind)


def _expected_kl(kw):
    kw = _detached(kw)
    return _refimpl().kl_estimate(kw["logp"], kw["ref_logp"], None, kw["kind"])


def _prepare_kl_rewards(kw):
    fw = _fw()
    approx_kl, reward = fw.utils.compute_approx_kl, fw.utils.compute_reward
    logp, ref, kind, beta = kw["logp"], kw["ref_logp"], kw["kind"], kw["beta"]
    scores = kw["scores"]
    r = scores.to(torch.promote_types(scores.dtype, torch.float32))      # experience_maker.py:244
    mask = kw["mask"].to(torch.bool)
    clip = _clip_range()

    def call():
        kl = approx_kl(logp, ref, kl_estimator=kind)                       # experience_maker.py:206
        return reward(r, beta, kl, action_mask=mask, reward_clip_range=clip)   # :284-290
    return call


def _expected_kl_rewards(kw):
    kw = _detached(kw)
    ri = _refimpl()
    out = ri.kl_penalized_rewards(kw["scores"], kw["logp"], kw["ref_logp"], kw["mask"], kw["beta"],
                                  kw["kind"])
    pad = -kw["beta"] * ri.kl_estimate(kw["logp"], kw["ref_logp"], None, kw["kind"])
    return torch.where(kw["mask"].bool(), out, pad)


# --- losses ------------------------------------------------------------------------------------------

def _prepare_aggregate(kw):
    if kw["mode"] != "token-mean":
        raise ValueError(f"aggregate: mode {kw['mode']!r} is not timed (token-mean only)")
    f = _fw().loss.aggregate_loss
    values, mask = kw["values"], kw["mask"].to(torch.bool)
    info = _batch_info(mask)
    return lambda: f(values, mask, token_level_loss=True, **info)       # ppo_actor.py:331


def _prepare_ppo(kw):
    if kw["agg"] != "token-mean" or kw.get("dual_clip") is not None:
        raise ValueError("ppo_clip_loss: only token-mean without dual clip is timed")
    low = kw["clip_low"]
    high = low if kw.get("clip_high") is None else kw["clip_high"]
    # built as ppo_actor.py:76-86 builds it (importance-sampling correction off: the CLI default)
    loss_fn = _fw().loss.PolicyLoss(clip_eps_low=low, clip_eps_high=high, dual_clip=None,
                                    token_level_loss=True, policy_loss_type="ppo")
    logp, old, A = kw["logp"], kw["old_logp"], kw["advantages"]
    if A.dim() == 1:
        A = A.unsqueeze(-1).expand_as(logp)
    mask = kw["mask"].to(torch.bool)
    info = _batch_info(mask)
    return lambda: loss_fn(logp, old, A, action_mask=mask, rollout_log_probs=None, **info)


def _prepare_value(kw):
    if kw["agg"] != "token-mean":
        raise ValueError("value_loss: the critic's ValueLoss is token-mean only (ppo_critic.py:60)")
    loss_fn = _fw().loss.ValueLoss(kw["clip"])                             # ppo_critic.py:60
    values, old, ret = kw["values"], kw["old_values"], kw["returns"]
    mask = kw["mask"].to(torch.bool)
    info = _batch_info(mask)
    return lambda: loss_fn(values, old, ret, action_mask=mask, **info)


# --- preferences: every loss module returns the batch mean -------------------------------------------

def _prepare_bt(kw):
    loss_fn = _fw().loss.PairWiseLoss()                  # rm_trainer.py:58-59 (--model.loss_type sigmoid)
    c, r = kw["chosen_rewards"], kw["rejected_rewards"]
    return lambda: loss_fn(c, r)


def _prepare_dpo(ipo: bool):
    def prepare(kw):
        beta = kw["tau"] if ipo else kw["beta"]
        loss_fn = _fw().loss.DPOLoss(beta, 0.0, ipo)     # dpo_trainer.py:64
        pc, pr = kw["policy_chosen_logps"], kw["policy_rejected_logps"]
        rc, rr = kw["ref_chosen_logps"], kw["ref_rejected_logps"]
        return lambda: loss_fn(pc, pr, rc, rr)
    return prepare


def _mean_of(function: str):
    def expected(kw):
        kw = _detached(kw)
        fn = getattr(_refimpl(), function)
        args = {k: v for k, v in kw.items()}
        return fn(**args).mean()
    return expected


def _batch_mean(module: str, line) -> str:
    return (f"{module} returns the batch mean of the per-pair losses (loss.mean(), {_L}:{line}, "
            f"{_VERSION}), not each pair's loss: checked against the mean of refimpl's per-pair losses")


def _first(out, kw):
    return out[0]


# --- log-probabilities -------------------------------------------------------------------------------

def _prepare_token_logprobs(kw):
    f = _fw().utils.log_probs_from_logits
    logits, tokens = kw["logits"], kw["tokens"]
    return lambda: f(logits, tokens)             # actor.py:289 (temperature 1: no in-place division)


def _token_logprobs_source() -> str:
    import importlib.util
    try:
        flash = importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):
        flash = False
    path = ("flash-attn's triton cross_entropy_loss, :180-183" if flash
            else "without flash-attn: gather and a chunked logsumexp, :185-188")
    return _src(_U, 172, f"log_probs_from_logits ({path})")


def _prepare_sequence_logprob(kw):
    trainer = _dpo_trainer().__new__(_dpo_trainer())
    token_logp, mask = kw["token_logp"], kw["mask"]
    B = mask.shape[0]
    # OpenRLHF's layout (concatenated_forward, dpo_trainer.py:315-323): per-token log-probs of
    # tokens 1..L-1 of prompt + response, the attention mask over all L tokens and the prompt
    # lengths; here a one-token prompt, so the response's loss mask is the canonical mask.
    attention_mask = torch.cat([torch.ones(B, 1, dtype=torch.long, device=mask.device),
                                mask.to(torch.long)], dim=1)
    prompt_id_lens = [1] * B
    return lambda: trainer._get_batch_logps(token_logp, attention_mask, prompt_id_lens)


# --- returns and advantages (no gradient: @torch.no_grad) --------------------------------------------

def _bare_maker():
    fw = _fw()
    return fw.RemoteExperienceMaker.__new__(fw.RemoteExperienceMaker)


def _prepare_gae(kw):
    maker = _bare_maker()
    rewards, values, mask = kw["rewards"], kw["values"], kw["mask"].to(torch.bool)
    gamma, lam = kw["gamma"], kw["lam"]
    return lambda: maker.get_advantages_and_returns(values, rewards, mask, gamma, lam)


def _prepare_returns(kw):
    maker = _bare_maker()
    rewards, mask, gamma = kw["rewards"], kw["mask"].to(torch.bool), kw["gamma"]
    return lambda: maker.get_cumulative_returns(rewards, mask, gamma)


def _prepare_group(estimator: str):
    """``compute_advantages_and_returns`` with ``--algo.advantage.estimator`` = ``estimator`` on
    one Experience of one-token responses: the per-sample scores (``Experience.rewards``, (B,)),
    ``index`` the samples' places (the groups contiguous, n_samples_per_prompt = GROUP_SIZE), no
    KL (coefficient 0). The group statistics are the cost; compute_reward and the cumulative
    returns run over one token."""
    def prepare(kw):
        from conformance.adapters.openrlhf import _maker
        fw = _fw()
        scores, group_ids = kw["scores"], kw["group_ids"]
        B = scores.shape[0]
        n = int((group_ids == group_ids[0]).sum())
        if not torch.equal(group_ids, torch.arange(B, device=group_ids.device) // n):
            raise ValueError("OpenRLHF takes groups of one size, contiguous "
                             f"({_EM}:256, {_VERSION})")
        if estimator == "group_norm" and (kw["scale"] != "group"):
            raise ValueError("group_norm divides by the group std (scale='group') only")
        maker = _maker(estimator, n)
        r = scores.to(torch.promote_types(scores.dtype, torch.float32))
        kl = torch.zeros(B, 1, dtype=torch.float32, device=scores.device)
        experience = fw.Experience(index=list(range(B)), rewards=r,
                                   action_mask=torch.ones(B, 1, dtype=torch.bool, device=scores.device),
                                   kl=kl, info={})

        def call():
            # compute_advantages_and_returns replaces rewards and sets kl = None (:244, :322):
            # put the inputs back (two attribute stores) so that every call does the same work
            experience.rewards, experience.kl = r, kl
            return maker.compute_advantages_and_returns([experience])[0].advantages
        return call
    return prepare


def _column0(out, kw):
    return out[:, 0]


def _expected_group_norm(kw):
    kw = _detached(kw)
    return _refimpl().group_normalized_advantages(kw["scores"], kw["group_ids"], "group", eps=1e-9)


SKIPPED: dict[str, str] = {
    "batch_normalized_advantages": (
        f"the whitening is inline in RemoteExperienceMaker.compute_advantages_and_returns "
        f"({_EM}:325-338, {_VERSION}), after compute_reward and the GAE or cumulative-returns "
        "recursion over every token in the same call: no call runs the whitening alone"),
    "policy_gradient_loss": (
        f"no plain policy-gradient loss: PolicyLoss's policy_loss_type is ppo or gspo "
        f"({_L}:186-198, {_VERSION})"),
}


def entries() -> dict[str, Entry]:
    return {
        "kl_estimate": Entry(
            _prepare_kl, expected=_expected_kl,
            deviation=f"compute_approx_kl takes no mask: padded entries hold the estimate of the "
                      f"padding log-probs, not 0 ({_U}:69-113, {_VERSION})",
            source=_src(_U, 69, "compute_approx_kl")),
        "kl_penalized_rewards": Entry(
            _prepare_kl_rewards, expected=_expected_kl_rewards,
            deviation=f"compute_reward adds -kl_coef * kl at every position, padded ones included "
                      f"({_U}:144, {_VERSION}), and compute_approx_kl takes no mask ({_U}:69-113): "
                      "padded entries hold -beta * KL of the padding log-probs, not 0",
            source=_src(_U, 131, f"compute_approx_kl ({_U}:69) then compute_reward")),
        "aggregate": Entry(
            _prepare_aggregate, source=_src(_L, 11, "aggregate_loss, token_level_loss=True")),
        "ppo_clip_loss": Entry(
            _prepare_ppo, canonical=_first,
            source=_src(_L, 116, "PolicyLoss(policy_loss_type='ppo').forward, :174")),
        "value_loss": Entry(
            _prepare_value, source=_src(_L, 262, "ValueLoss(clip_eps).forward, :272")),
        "bradley_terry_loss": Entry(
            _prepare_bt, expected=_mean_of("bradley_terry_loss"),
            deviation=_batch_mean("PairWiseLoss", 313),
            source=_src(_L, 301, "PairWiseLoss.forward, :306")),
        "dpo_loss": Entry(
            _prepare_dpo(False), canonical=_first, expected=_mean_of("dpo_loss"),
            deviation=_batch_mean("DPOLoss", 360),
            source=_src(_L, 329, "DPOLoss(beta).forward, :340")),
        "ipo_loss": Entry(
            _prepare_dpo(True), canonical=_first, expected=_mean_of("ipo_loss"),
            deviation=_batch_mean("DPOLoss(ipo=True)", 360),
            source=_src(_L, 329, "DPOLoss(beta=tau, ipo=True).forward, :351-352")),
        # forward only: the backward of its chunked logsumexp (slices assigned into a buffer,
        # models/utils.py:162-169) writes a full-size gradient per chunk: 94 ms at 64x256, more
        # than five minutes for one call at 256x1024 (measured), and quadratic beyond
        "token_logprobs": Entry(
            _prepare_token_logprobs, grad=False,
            source=_token_logprobs_source() + "; forward only: its backward through "
                   "_logsumexp_by_chunk (utils.py:162-169) writes a full-size gradient per "
                   "chunk of 1024 positions (94 ms at 64x256, over 5 min at 256x1024)"),
        "sequence_logprob": Entry(
            _prepare_sequence_logprob, canonical=_first,
            source=_src(_DPO, 361, "DPOTrainer._get_batch_logps (sum, mean), on an instance "
                                   "made by __new__")),
        "gae": Entry(
            _prepare_gae, grad=False,
            source=_src(_EM, 343, "RemoteExperienceMaker.get_advantages_and_returns "
                                  "(@torch.no_grad, :342)")),
        "discounted_returns": Entry(
            _prepare_returns, grad=False,
            source=_src(_EM, 390, "RemoteExperienceMaker.get_cumulative_returns "
                                  "(@torch.no_grad, :389)")),
        "group_normalized_advantages": Entry(
            _prepare_group("group_norm"), canonical=_column0, expected=_expected_group_norm,
            deviation=f"divides by the group std + 1e-9, a literal ({_EM}:274, {_VERSION}), not "
                      "+ eps = 1e-6: checked against refimpl with eps = 1e-9",
            grad=False,
            source=_src(_EM, 238, "compute_advantages_and_returns, estimator group_norm "
                                  "(:273-274), one-token responses")),
        "leave_one_out_advantages": Entry(
            _prepare_group("rloo"), canonical=_column0, grad=False,
            source=_src(_EM, 238, "compute_advantages_and_returns, estimator rloo (:268-270), "
                                  "one-token responses")),
    }
