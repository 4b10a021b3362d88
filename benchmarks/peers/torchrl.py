"""torchrl 0.14.1's own estimator code, as the benchmark times it (benchmarks/peers/__init__.py).

The functions and loss-module methods the adapter (conformance/adapters/torchrl.py) calls, on
inputs already in torchrl's layout: ``[B, T, 1]`` tensors (time at dim -2, a feature dim last),
``done`` / ``terminated`` flags marking each row's last real token instead of a mask, the next
state's value as its own tensor, boolean masks, and a ``GRPOLoss`` built once without an actor
network (the tensor-level use its methods allow). All of that is prepared before the timed call.

torchrl's value functionals take no mask: the padded tail of a row after its ``done`` flag is
estimated as an episode of its own (it ends at the last column, with no value after it). Those
entries are not the contract's zeros, so ``gae`` and ``discounted_returns`` are checked against
refimpl on each row's real tokens and refimpl run on the padded tail as its own episode.
"""

from __future__ import annotations

import functools

import torch

from benchmarks.peers import Entry

FRAMEWORK = "torchrl"
_VERSION = "torchrl 0.14.1"
_FUNC = "torchrl/objectives/value/functional.py"
_GRPO = "torchrl/objectives/llm/grpo.py"
_DIST = "torchrl/objectives/llm/distillation.py"


def _src(path: str, line, note: str = "") -> str:
    return f"{path}:{line} ({_VERSION})" + (f"; {note}" if note else "")


@functools.lru_cache(maxsize=None)
def _tr():
    from conformance.adapters.torchrl import _tr as load
    return load()


def available() -> bool:
    try:
        _tr()
        return True
    except Exception:                    # noqa: BLE001  (any failure: the framework is unavailable)
        return False


def _episode_ends(mask: torch.Tensor) -> torch.Tensor:
    from conformance.adapters.torchrl import _episode_ends as ends
    return ends(mask)


@functools.lru_cache(maxsize=8)
def _loss_module(clip_low: float, clip_high: float):
    """``GRPOLoss`` with its defaults (aggregation='token_mean') and the clip range, built once."""
    cls = _tr()["GRPOLoss"]
    clip = clip_low if clip_high == clip_low else (clip_low, clip_high)
    return cls(clip_epsilon=clip)                # actor_network=None: tensor-level use only


def _detached(kw: dict) -> dict:
    return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _refimpl():
    import refimpl
    return refimpl


def _with_padded_tail(fn, tensors: list, mask: torch.Tensor):
    """``fn(*tensors, mask)`` on each row's real tokens, and on the padded tail of each row run as
    an episode of its own (shifted to the row's start so that its mask is a prefix); rows without
    padding take only the first. What torchrl's maskless functionals compute."""
    m = mask.bool()
    B, T = m.shape
    real = fn(*tensors, m)
    lengths = m.sum(dim=1, keepdim=True)
    t = torch.arange(T, device=m.device).unsqueeze(0)
    forward = (t + lengths).clamp(max=T - 1)
    tail_mask = t < (T - lengths)
    tail_mask[:, 0] = True                       # rows without padding: a dummy, discarded below
    tail = fn(*[x.gather(1, forward) for x in tensors], tail_mask)
    back = (t - lengths).clamp(min=0)

    def merge(a, b):
        return torch.where(m, a, b.gather(1, back))
    if isinstance(real, tuple):
        return tuple(merge(a, b) for a, b in zip(real, tail))
    return merge(real, tail)


# --- returns and advantages ----------------------------------------------------------------------------

def _prepare_gae(kw):
    gae = _tr()["gae"]                       # generalized_advantage_estimate (the loop)
    gamma, lam = kw["gamma"], kw["lam"]
    done = _episode_ends(kw["mask"])
    terminated = done.clone()
    V = kw["values"].unsqueeze(-1)
    r = kw["rewards"].unsqueeze(-1)
    # the next state's value: V shifted by one step, 0 after the last real token (terminal)
    V_next = torch.cat([V[:, 1:], torch.zeros_like(V[:, :1])], dim=1)
    V_next = torch.where(done, torch.zeros_like(V_next), V_next)
    return lambda: gae(gamma, lam, V, V_next, r, done, terminated)


def _squeeze_pair(out, kw):
    return tuple(x.squeeze(-1) for x in out)


def _expected_gae(kw):
    kw = _detached(kw)
    gae = _refimpl().gae
    return _with_padded_tail(lambda r, v, m: gae(r, v, m, kw["gamma"], kw["lam"]),
                             [kw["rewards"], kw["values"]], kw["mask"])


def _prepare_returns(kw):
    r2g = _tr()["reward2go"]
    gamma = kw["gamma"]
    done = _episode_ends(kw["mask"])
    r = kw["rewards"].unsqueeze(-1)
    return lambda: r2g(r, done, gamma)


def _squeeze(out, kw):
    return out.squeeze(-1)


def _expected_returns(kw):
    kw = _detached(kw)
    dr = _refimpl().discounted_returns
    return _with_padded_tail(lambda r, m: dr(r, m, kw["gamma"]), [kw["rewards"]], kw["mask"])


# --- KL --------------------------------------------------------------------------------------------------

def _prepare_kl(kw):
    if kw["kind"] != "k3":
        raise ValueError("torchrl's only KL estimator is k3")
    k3 = _tr()["k3"]
    logp, ref = kw["logp"], kw["ref_logp"]
    return lambda: k3(ref, logp)             # (target_log_prob, log_prob of the sampler)


def _expected_kl(kw):
    kw = _detached(kw)
    return _refimpl().kl_estimate(kw["logp"], kw["ref_logp"], None, kw["kind"])


# --- GRPOLoss's tensor-level methods --------------------------------------------------------------------

def _prepare_aggregate(kw):
    if kw["mode"] != "token-mean":
        raise ValueError("aggregate: GRPOLoss() aggregates as token_mean")
    values = kw["values"].unsqueeze(-1)          # [B, T, 1]: the per-token loss layout
    loss = _loss_module(0.2, 0.2).to(values.device)      # its clip buffers on the data's device
    mask = kw["mask"].bool()
    return lambda: loss._aggregate_loss_value(values, mask)


def _prepare_ppo(kw):
    if kw["agg"] != "token-mean" or kw.get("dual_clip") is not None:
        raise ValueError("ppo_clip_loss: GRPOLoss() is token_mean without dual clip")
    low = float(kw["clip_low"])
    high = low if kw.get("clip_high") is None else float(kw["clip_high"])
    logp, old = kw["logp"], kw["old_logp"]
    loss = _loss_module(low, high).to(logp.device)       # its clip buffers on the data's device
    A = kw["advantages"]
    A = (A.unsqueeze(-1).expand_as(logp) if A.dim() == 1 else A).unsqueeze(-1)     # [B, T, 1]
    mask = kw["mask"].bool()
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)

    def call():
        # GRPOLoss._log_weight's arithmetic (grpo.py:961-971): the mask narrowed to finite old
        # log-probs, both log-probs 0 outside it, the per-token log-weight
        m = mask & torch.isfinite(old)
        cur = torch.where(m, logp, zero)
        prev = torch.where(m, old, zero)
        log_weight = (cur - prev).unsqueeze(-1)
        per_token, _clip_fraction = loss._compute_policy_objective(log_weight, A)
        return loss._aggregate_loss_value(per_token, m)
    return call


def _scalar(out, kw):
    return out.reshape(())


SKIPPED: dict[str, str] = {
    "group_normalized_advantages": (
        f"MCAdvantage (the GRPO advantage, {_GRPO}:1019) is a replay-buffer transform reached one "
        f"trajectory per call: _inv_call unbinds the batch and runs _inv_call_single per trajectory "
        f"({_GRPO}:1421-1426, :1433), so its cost is TensorDict bookkeeping per sample, not the "
        "group statistics"),
    "leave_one_out_advantages": "no leave-one-out baseline in torchrl's LLM objectives",
    "batch_normalized_advantages": (
        "only inside PPOLoss.forward with normalize_advantage=True (torchrl/objectives/ppo.py:1039, "
        "torchrl/_utils.py:1226 _standardize, a private helper without a validity mask)"),
    "kl_penalized_rewards": (
        "KLComputation / KLRewardTransform are environment transforms on one step's TensorDict, "
        "looping over the samples (torchrl/envs/llm/transforms/kl.py:1559) and, for "
        "KLRewardTransform, running the reference model: no tensor-level call"),
    "policy_gradient_loss": (
        "ReinforceLoss (torchrl/objectives/reinforce.py:40) runs actor and critic networks on a "
        "TensorDict; no tensor-level policy-gradient loss"),
    "value_loss": (
        "the critic loss is ClipPPOLoss.loss_critic (torchrl/objectives/ppo.py:939), which runs the "
        "critic network on a TensorDict; no tensor-level call"),
    "bradley_terry_loss": "no reward-model loss in torchrl",
    "dpo_loss": "no DPO loss in torchrl",
    "ipo_loss": "no IPO loss in torchrl",
    "token_logprobs": (
        "log-probs are computed inside the LLM wrappers' forward; the tensor step "
        "(TransformersWrapper._log_probs_generate, torchrl/modules/llm/policies/"
        "transformers_wrapper.py:1979) is private and sets the first position's log-prob to 0 "
        "(:2001)"),
    "sequence_logprob": "no sequence log-probability function in torchrl",
}


def entries() -> dict[str, Entry]:
    return {
        "gae": Entry(
            _prepare_gae, canonical=_squeeze_pair, expected=_expected_gae,
            deviation=f"generalized_advantage_estimate has no mask: the padded tail after each "
                      f"row's done flag is estimated as an episode of its own, so padded "
                      f"positions hold the GAE of the padding values instead of 0 "
                      f"({_FUNC}:169-176, {_VERSION})",
            source=_src(_FUNC, 120, "generalized_advantage_estimate, the loop GAE.forward runs "
                                    "by default (vectorized=None, torchrl/objectives/value/"
                                    "advantages.py:2315-2336); vec_generalized_advantage_estimate "
                                    f"({_FUNC}:271) conforms too and is slower on CPU "
                                    "(0.10 s vs 0.036 s at 256x1024, 0.48 s vs 0.07 s at "
                                    "1024x1024, one thread)")),
        "discounted_returns": Entry(
            _prepare_returns, canonical=_squeeze, expected=_expected_returns,
            deviation=f"reward2go has no mask: the padded tail after each row's done flag is "
                      f"summed as an episode of its own, so padded positions hold returns of the "
                      f"padding rewards instead of 0 ({_FUNC}:1447-1453, {_VERSION})",
            source=_src(_FUNC, 1389, "reward2go; td1_return_estimate / vec_td1_return_estimate "
                                     f"({_FUNC}:465, :649) need a next-state value")),
        "kl_estimate": Entry(
            _prepare_kl, expected=_expected_kl,
            deviation=f"k3_kl_token_estimate takes no mask: padded entries hold the estimate of "
                      f"the padding log-probs, not 0 ({_DIST}:25-72, {_VERSION})",
            source=_src(_DIST, 25, "k3_kl_token_estimate")),
        "aggregate": Entry(
            _prepare_aggregate, canonical=_scalar,
            source=_src(_GRPO, 784, "GRPOLoss()._aggregate_loss_value (token_mean)")),
        "ppo_clip_loss": Entry(
            _prepare_ppo, canonical=_scalar,
            source=_src(_GRPO, 769, "GRPOLoss(clip_epsilon)._compute_policy_objective after "
                                    "_log_weight's arithmetic (:961-971), then "
                                    "_aggregate_loss_value (:784)")),
    }
