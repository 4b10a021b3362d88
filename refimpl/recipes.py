"""The loss of one training step, per algorithm: the canonical functions composed on real models.

Each recipe takes what docs/contract.md, "Training steps", defines: a policy ``model``, a frozen
``ref_model``, a ``batch`` (a dict of tensors) and a complete ``config`` (a dict), and returns a
``StepLoss``: the loss of the whole batch and, under ``grad_accum = k``, the losses of the k
micro-batches, whose gradients sum to the whole batch's. The training loops of ``refimpl.train``
call these recipes for their loss, so the code that trains is the code that certifies.

| algorithm                   | paper                                                             |
|-----------------------------|-------------------------------------------------------------------|
| grpo                        | Shao et al., "DeepSeekMath", 2024, arXiv:2402.03300, Sec. 4.1 (Eq. 3) |
| dr_grpo                     | Liu et al., "Understanding R1-Zero-Like Training", 2025, arXiv:2503.20783, Sec. 3.1 |
| dapo                        | Yu et al., "DAPO", 2025, arXiv:2503.14476, Sec. 3.1 and 3.3          |
| rloo                        | Ahmadian et al., "Back to Basics", 2024, arXiv:2402.14740, Sec. 3.2  |
| reinforce_pp                | Hu, "REINFORCE++", 2025, arXiv:2501.03262, Sec. 3                    |
| ppo                         | Schulman et al., "PPO", 2017, arXiv:1707.06347, Eq. 7 and 9; Ouyang et al., "InstructGPT", 2022, arXiv:2203.02155, Eq. 2 (KL in the reward); GAE: Schulman et al., 2015, arXiv:1506.02438 |
| dpo                         | Rafailov et al., "DPO", 2023, arXiv:2305.18290, Eq. 7               |
| ipo                         | Azar et al., "A General Theoretical Paradigm ...", 2023, arXiv:2310.12036, Eq. 17 |
| reward_model                | Bradley and Terry, 1952; Ouyang et al., 2022, arXiv:2203.02155, Eq. 1 |

The log-probability convention (contract, "Batch"), in ``completion_logprobs``:

    input_ids    = cat(prompt_ids, completion_ids)            prompts left-padded, completions right
    position_ids = clamp(cumsum(attention_mask) - 1, min=0)   as generation does with left padding
    logp[b, t]   = log_softmax(logits[b, P - 1 + t] / temperature)[completion_ids[b, t]]

Gradient accumulation, and what we chose
- Advantages, baselines and group statistics are computed once, on the whole batch (a trainer
  computes them before it splits the batch). The batch is then cut into k contiguous micro-batches.
- Every aggregation mode is linear in the per-token losses, so the whole-batch loss is a sum of
  micro-batch terms if each term keeps the whole batch's denominator. A micro-batch's loss is its
  own aggregate times ``N_mb / N`` (real tokens) for ``token-mean`` and ``B_mb / B`` (rows) for the
  other modes and for the per-pair means; ``seq-mean-token-sum-norm`` keeps the padded width T of
  the whole batch as its default ``norm_len``. A token-mean taken per micro-batch and averaged
  over micro-batches (``N_mb / N`` replaced by ``1 / k``) is the error the contract names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from refimpl.aggregation import AGG_MODES, aggregate
from refimpl.group import group_normalized_advantages, leave_one_out_advantages
from refimpl.kl import kl_estimate, kl_penalized_rewards
from refimpl.logprobs import sequence_logprob, token_logprobs
from refimpl.policy_loss import ppo_clip_loss
from refimpl.preferences import bradley_terry_loss, dpo_loss, ipo_loss
from refimpl.returns import discounted_returns, gae
from refimpl.value_loss import value_loss
from refimpl.whitening import batch_normalized_advantages

__all__ = ["ALGORITHMS", "ONLINE", "PREFERENCE", "OPTIONS", "RECIPES", "StepLoss", "default_config",
           "train_step", "trained_parameters",
           "completion_logits", "completion_logprobs", "completion_values", "sequence_scores", "micro_slices",
           "grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo", "dpo", "ipo", "reward_model"]

ONLINE = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo")
PREFERENCE = ("dpo", "ipo", "reward_model")
ALGORITHMS = ONLINE + PREFERENCE

#: What each algorithm's name means as options: Dr. GRPO's and DAPO's are the contract's
#: ("Config and recipes"); the others are where each paper puts its KL and how it aggregates. A
#: recipe reads only ``config``; these are what ``default_config`` puts there.
OPTIONS = {
    "dr_grpo": {"scale": "none", "agg": "seq-mean-token-sum-norm"},
    "dapo": {"clip_high": 0.28, "beta": 0.0, "agg": "token-mean"},
    # Ahmadian et al. 2024, Sec. 2-3: the KL (the sequence log-ratio) in the reward, REINFORCE on
    # the sequence log-probability (a sum over tokens, not a per-response mean)
    "rloo": {"kl_in": "reward", "kl_kind": "k1", "agg": "seq-mean-token-sum"},
    # Hu 2025, Sec. 3: a per-token k1 penalty in the reward, a token-level loss
    "reinforce_pp": {"kl_in": "reward", "kl_kind": "k1", "beta": 0.01, "eps": 1e-8,
                     "agg": "token-mean"},
    # Ouyang et al. 2022, Eq. 2: the per-token log-ratio in the reward
    "ppo": {"kl_in": "reward", "kl_kind": "k1", "agg": "token-mean"},
    "dpo": {"beta": 0.1},
}

#: The reference sheet's typical values (epsilon 0.2, beta 0.04, lambda 0.95, gamma 1.0).
_DEFAULTS = dict(beta=0.04, kl_kind="k3", kl_in="loss", clip_low=0.2, clip_high=0.2,
                 dual_clip=None, scale="group", eps=1e-6, agg="seq-mean-token-mean",
                 norm_len=None, gamma=1.0, lam=0.95, label_smoothing=0.0, tau=0.1,
                 vf_coef=0.5, value_clip=0.2, whiten=True, grad_accum=1, temperature=1.0)


def default_config(algorithm: str, **overrides) -> dict:
    """A complete config for ``algorithm``: the typical values, the algorithm's own options
    (``OPTIONS``), then ``overrides``. Unknown keys are a ValueError."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    config = {"algorithm": algorithm, **_DEFAULTS, **OPTIONS.get(algorithm, {})}
    extra = set(overrides) - set(config) - {"value_model", "model_path", "ref_model_path",
                                            "value_model_path"}
    if extra:
        raise ValueError(f"config has unknown keys {sorted(extra)}")
    config.update(overrides)
    return config


@dataclass
class StepLoss:
    """One step's loss. ``loss`` is the whole batch's; ``micro`` the k micro-batch losses
    (``sum(micro) == loss`` up to rounding, and so are their gradients); ``advantages`` the
    per-token advantages used (online algorithms); ``stats`` detached figures for logging."""
    loss: Tensor
    micro: list[Tensor]
    advantages: Tensor | None = None
    stats: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Model outputs, by the contract's convention
# ---------------------------------------------------------------------------------------------

def _inputs(prompt_ids, prompt_mask, completion_ids, completion_mask):
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1).long()
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def completion_logits(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor, temperature: float = 1.0) -> Tensor:
    """``(B, T, V)``: the logits that score each completion token, those at position ``P - 1 + t``,
    in float32, divided by ``temperature``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    input_ids, attention_mask, position_ids = _inputs(prompt_ids, prompt_mask, completion_ids,
                                                      completion_mask)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids).logits
    return logits[:, P - 1:P - 1 + T].float() / temperature


def completion_logprobs(model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                        completion_mask: Tensor, temperature: float = 1.0) -> Tensor:
    """``(B, T)``: log pi(y_t | x, y_<t) of each completion token, the logits at position
    ``P - 1 + t`` divided by ``temperature``. Padded entries are computed too (masks say which
    count)."""
    logits = completion_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                               temperature)
    return token_logprobs(logits, completion_ids)


def completion_values(value_model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor) -> Tensor:
    """``(B, T)``: V(s_t), the value model's output at position ``P - 1 + t`` (the state before
    completion token t)."""
    input_ids, attention_mask, position_ids = _inputs(prompt_ids, prompt_mask, completion_ids,
                                                      completion_mask)
    P, T = prompt_ids.shape[1], completion_ids.shape[1]
    out = value_model(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids).logits
    return out[:, P - 1:P - 1 + T, 0].float()


def sequence_scores(reward_model, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                    completion_mask: Tensor) -> Tensor:
    """``(B,)``: a sequence classifier's output at each sequence's last real token, found from
    the attention mask (not from a pad-id heuristic)."""
    input_ids, attention_mask, position_ids = _inputs(prompt_ids, prompt_mask, completion_ids,
                                                      completion_mask)
    hidden = reward_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids).last_hidden_state
    per_position = reward_model.score(hidden)[..., 0].float()            # (B, P + T)
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(dim=1)
    return per_position.gather(1, last.unsqueeze(1)).squeeze(1)


# ---------------------------------------------------------------------------------------------
# Micro-batches
# ---------------------------------------------------------------------------------------------

def micro_slices(batch_size: int, grad_accum: int) -> list[slice]:
    """The ``grad_accum`` contiguous, equal micro-batches of a batch of ``batch_size`` rows."""
    if not isinstance(grad_accum, int) or isinstance(grad_accum, bool) or grad_accum < 1:
        raise ValueError(f"grad_accum must be a positive int, got {grad_accum!r}")
    if batch_size % grad_accum:
        raise ValueError(f"grad_accum must divide the batch size {batch_size}, got {grad_accum}")
    n = batch_size // grad_accum
    return [slice(i * n, (i + 1) * n) for i in range(grad_accum)]


def _share(mask: Tensor, rows: slice, agg: str | None) -> float:
    """The micro-batch's share of the whole batch's denominator: real tokens for token-mean,
    rows otherwise (and for per-pair means, ``agg=None``)."""
    if agg == "token-mean":
        return float(mask[rows].sum()) / float(mask.sum())
    return (rows.stop - rows.start) / mask.shape[0]


def _rows(batch: dict, rows: slice) -> dict:
    return {k: v[rows] for k, v in batch.items()}


def _check(batch: dict, config: dict, keys: tuple[str, ...], batch_keys=None) -> None:
    if not isinstance(batch, dict):
        raise ValueError(f"batch must be a dict of tensors, got {type(batch).__name__}")
    missing = [k for k in (batch_keys or ()) if k not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing} (docs/contract.md, Training steps, Batch)")
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict, got {type(config).__name__}")
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"config is missing {missing} (use refimpl.recipes.default_config)")
    if config.get("agg", "token-mean") not in AGG_MODES:
        raise ValueError(f"config['agg'] must be one of {AGG_MODES}, got {config['agg']!r}")
    if config.get("kl_in", "loss") not in ("loss", "reward"):
        raise ValueError(f"config['kl_in'] must be 'loss' or 'reward', got {config['kl_in']!r}")


_ONLINE_KEYS = ("beta", "kl_kind", "clip_low", "clip_high", "dual_clip", "agg", "norm_len",
                "grad_accum", "temperature")
_BATCH = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "old_logp", "scores")
_PAIRS = ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")


def _kl_in_reward(config: dict) -> None:
    if config.get("kl_in", "reward") != "reward":
        raise ValueError(f"config['kl_in'] must be 'reward' for {config.get('algorithm')}: its "
                         f"recipe puts the KL in the per-token reward, got {config['kl_in']!r}")


def _logps(model, batch: dict, temperature: float) -> Tensor:
    return completion_logprobs(model, batch["prompt_ids"], batch["prompt_mask"],
                               batch["completion_ids"], batch["completion_mask"], temperature)


def _ref_logp(ref_model, batch: dict, config: dict) -> Tensor:
    with torch.no_grad():
        return _logps(ref_model, batch, config["temperature"])


def _clipped_steps(model, batch: dict, config: dict, advantages: Tensor, ref_logp: Tensor,
                   kl_in_loss: bool) -> tuple[list[Tensor], dict]:
    """The clipped surrogate (plus the KL term when it is in the loss) of each micro-batch."""
    mask = batch["completion_mask"].bool()
    micro, kls = [], []
    for rows in micro_slices(mask.shape[0], config["grad_accum"]):
        mb, m = _rows(batch, rows), mask[rows]
        logp = _logps(model, mb, config["temperature"])
        loss = ppo_clip_loss(logp, mb["old_logp"], advantages[rows], m, config["clip_low"],
                             config["clip_high"], config["dual_clip"], config["agg"],
                             config["norm_len"])
        kl = kl_estimate(logp, ref_logp[rows], m, config["kl_kind"])
        if kl_in_loss:
            loss = loss + config["beta"] * aggregate(kl, m, config["agg"], config["norm_len"])
        micro.append(loss * _share(mask, rows, config["agg"]))
        kls.append(kl.detach().sum(dim=1))
    return micro, {"kl": torch.cat(kls)}


def _sequence_kl(batch: dict, ref_logp: Tensor, config: dict) -> Tensor:
    mask = batch["completion_mask"].bool()
    return kl_estimate(batch["old_logp"], ref_logp, mask, config["kl_kind"]).sum(dim=1)


def _group_scores(batch: dict, ref_logp: Tensor, config: dict) -> Tensor:
    """``s = scores`` with the KL in the loss; ``s = scores - beta * sum_t k(old_logp, ref_logp)``
    with the KL in the reward."""
    scores = batch["scores"]
    if config["kl_in"] == "reward":
        scores = scores - config["beta"] * _sequence_kl(batch, ref_logp, config).to(scores.dtype)
    return scores


def _finish(micro: list[Tensor], advantages: Tensor, stats: dict) -> StepLoss:
    return StepLoss(loss=torch.stack(micro).sum(), micro=micro, advantages=advantages.detach(),
                    stats=stats)


# ---------------------------------------------------------------------------------------------
# Online algorithms
# ---------------------------------------------------------------------------------------------

def grpo(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """GRPO (Shao et al. 2024, Sec. 4.1.2, outcome supervision; Eq. 3):

        A_i  = (s_i - mean_g s) / (std_g s + eps)           every token of response i
        loss = ppo_clip_loss(logp, old_logp, A, mask) + beta * aggregate(k(logp, ref_logp))

    with ``s = scores`` (KL in the loss, as the paper) or ``s = scores - beta * sum_t k(old_logp,
    ref_logp)`` (``kl_in="reward"``). Dr. GRPO and DAPO are this recipe with their options."""
    _check(batch, config, _ONLINE_KEYS + ("scale", "eps", "kl_in"), _BATCH + ("group_ids",))
    mask = batch["completion_mask"].bool()
    ref_logp = _ref_logp(ref_model, batch, config)
    s = _group_scores(batch, ref_logp, config)
    A_seq = group_normalized_advantages(s, batch["group_ids"], config["scale"], config["eps"])
    A = A_seq.unsqueeze(1).expand(mask.shape).to(batch["old_logp"].dtype)
    micro, stats = _clipped_steps(model, batch, config, A, ref_logp, config["kl_in"] == "loss")
    return _finish(micro, torch.where(mask, A, torch.zeros_like(A)), stats)


def dr_grpo(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """Dr. GRPO (Liu et al. 2025, Sec. 3.1): GRPO without the std division and without the
    per-response length normalisation; ``config`` carries ``OPTIONS["dr_grpo"]``."""
    return grpo(model, ref_model, batch, config)


def dapo(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """DAPO (Yu et al. 2025, Sec. 3.1 clip-higher, Sec. 3.3 token-level loss): GRPO with
    ``clip_high = 0.28``, ``beta = 0`` and token-mean aggregation; ``config`` carries them.
    (Dynamic sampling, Sec. 3.2, is a rollout filter, not part of the loss.)"""
    return grpo(model, ref_model, batch, config)


def rloo(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """RLOO (Ahmadian et al. 2024, Sec. 3.2): A_i = s_i - mean_{j != i} s_j within i's group,
    then GRPO's clipped loss and KL term. With ``old_logp = logp`` (one epoch) the clip is
    inactive, and with ``agg="seq-mean-token-sum"`` (the sequence log-probability, ``OPTIONS``)
    this is the REINFORCE leave-one-out estimator; a per-response token mean would weight each
    response by 1/length."""
    _check(batch, config, _ONLINE_KEYS + ("kl_in",), _BATCH + ("group_ids",))
    mask = batch["completion_mask"].bool()
    ref_logp = _ref_logp(ref_model, batch, config)
    s = _group_scores(batch, ref_logp, config)
    A_seq = leave_one_out_advantages(s, batch["group_ids"])
    A = A_seq.unsqueeze(1).expand(mask.shape).to(batch["old_logp"].dtype)
    micro, stats = _clipped_steps(model, batch, config, A, ref_logp, config["kl_in"] == "loss")
    return _finish(micro, torch.where(mask, A, torch.zeros_like(A)), stats)


def reinforce_pp(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """REINFORCE++ (Hu 2025, Sec. 3): the KL in a per-token reward, returns-to-go, whitened over
    the whole batch, then the clipped loss without a KL term:

        r_t = -beta k(old_logp_t, ref_logp_t) (+ score at the last token)
        A_t = whiten(sum_{l >= t} gamma^(l-t) r_l)"""
    _check(batch, config, _ONLINE_KEYS + ("gamma", "eps"), _BATCH)
    _kl_in_reward(config)
    mask = batch["completion_mask"].bool()
    ref_logp = _ref_logp(ref_model, batch, config)
    scores = batch["scores"].to(batch["old_logp"].dtype)
    r = kl_penalized_rewards(scores, batch["old_logp"], ref_logp, mask, config["beta"],
                             config["kl_kind"])
    A = batch_normalized_advantages(discounted_returns(r, mask, config["gamma"]), mask,
                                    config["eps"])
    micro, stats = _clipped_steps(model, batch, config, A, ref_logp, kl_in_loss=False)
    return _finish(micro, torch.where(mask, A, torch.zeros_like(A)), stats)


def ppo(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """PPO with a value model (Schulman et al. 2017, Eq. 7 and 9; the RLHF form of Ouyang et al.
    2022, Eq. 2, with the KL in the reward):

        r_t = -beta k(old_logp_t, ref_logp_t) (+ score at the last token)
        A, R = GAE(r, old_values, gamma, lambda);  A whitened over the batch when ``whiten``
        loss = ppo_clip_loss(logp, old_logp, A) + vf_coef * value_loss(V, old_values, R, value_clip)

    ``config["value_model"]`` is the critic; ``batch["old_values"]`` its rollout values."""
    _check(batch, config, _ONLINE_KEYS + ("gamma", "lam", "vf_coef", "value_clip", "whiten",
                                          "value_model"), _BATCH + ("old_values",))
    _kl_in_reward(config)
    mask = batch["completion_mask"].bool()
    ref_logp = _ref_logp(ref_model, batch, config)
    dtype = batch["old_logp"].dtype
    r = kl_penalized_rewards(batch["scores"].to(dtype), batch["old_logp"], ref_logp, mask,
                             config["beta"], config["kl_kind"])
    old_values = batch["old_values"].to(dtype)
    A, R = gae(r, old_values, mask, config["gamma"], config["lam"])
    if config["whiten"]:
        A = batch_normalized_advantages(A, mask)
    micro_policy, stats = _clipped_steps(model, batch, config, A, ref_logp, kl_in_loss=False)
    micro = []
    for rows, policy_loss in zip(micro_slices(mask.shape[0], config["grad_accum"]), micro_policy):
        mb = _rows(batch, rows)
        V = completion_values(config["value_model"], mb["prompt_ids"], mb["prompt_mask"],
                              mb["completion_ids"], mb["completion_mask"])
        v_loss = value_loss(V, old_values[rows], R[rows], mask[rows], config["value_clip"],
                            config["agg"], config["norm_len"])
        micro.append(policy_loss + config["vf_coef"] * v_loss * _share(mask, rows, config["agg"]))
    stats["returns"] = R.detach()
    return _finish(micro, torch.where(mask, A, torch.zeros_like(A)), stats)


# ---------------------------------------------------------------------------------------------
# Preference algorithms (temperature 1)
# ---------------------------------------------------------------------------------------------

def _pair_logps(model, mb: dict) -> tuple[Tensor, Tensor]:
    out = []
    for side in ("chosen", "rejected"):
        ids, mask = mb[f"{side}_ids"], mb[f"{side}_mask"]
        logp = completion_logprobs(model, mb["prompt_ids"], mb["prompt_mask"], ids, mask)
        out.append(sequence_logprob(logp, mask.bool()))
    return out[0], out[1]


def _pairwise(model, ref_model, batch: dict, config: dict, per_pair) -> StepLoss:
    n = batch["prompt_ids"].shape[0]
    micro, margins = [], []
    for rows in micro_slices(n, config["grad_accum"]):
        mb = _rows(batch, rows)
        pc, pr = _pair_logps(model, mb)
        with torch.no_grad():
            rc, rr = _pair_logps(ref_model, mb)
        micro.append(per_pair(pc, pr, rc, rr).mean() * ((rows.stop - rows.start) / n))
        margins.append(((pc - rc) - (pr - rr)).detach())
    return StepLoss(loss=torch.stack(micro).sum(), micro=micro,
                    stats={"margin": torch.cat(margins)})


def dpo(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """DPO (Rafailov et al. 2023, Eq. 7; conservative label smoothing of cDPO): the mean over
    pairs of ``dpo_loss`` on sequence sums of log-probabilities."""
    _check(batch, config, ("beta", "label_smoothing", "grad_accum"), _PAIRS)
    return _pairwise(model, ref_model, batch, config, lambda pc, pr, rc, rr: dpo_loss(
        pc, pr, rc, rr, config["beta"], config["label_smoothing"]))


def ipo(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """IPO (Azar et al. 2023, Eq. 17): the mean over pairs of ``(h - 1/(2 tau))^2`` with h the
    log-ratio margin of the sequence sums (not normalised by length)."""
    _check(batch, config, ("tau", "grad_accum"), _PAIRS)
    return _pairwise(model, ref_model, batch, config,
                     lambda pc, pr, rc, rr: ipo_loss(pc, pr, rc, rr, config["tau"]))


def reward_model(model, ref_model, batch: dict, config: dict) -> StepLoss:
    """Reward modelling (Bradley-Terry; Ouyang et al. 2022, Eq. 1): the mean over pairs of
    ``-log sigmoid(r(chosen) - r(rejected))``, r the classifier at the last real token.
    ``ref_model`` is unused (None is fine)."""
    _check(batch, config, ("grad_accum",), _PAIRS)
    n = batch["prompt_ids"].shape[0]
    micro, margins = [], []
    for rows in micro_slices(n, config["grad_accum"]):
        mb = _rows(batch, rows)
        rc, rr = (sequence_scores(model, mb["prompt_ids"], mb["prompt_mask"], mb[f"{s}_ids"],
                                  mb[f"{s}_mask"]) for s in ("chosen", "rejected"))
        micro.append(bradley_terry_loss(rc, rr).mean() * ((rows.stop - rows.start) / n))
        margins.append((rc - rr).detach())
    return StepLoss(loss=torch.stack(micro).sum(), micro=micro,
                    stats={"margin": torch.cat(margins)})


RECIPES = {"grpo": grpo, "dr_grpo": dr_grpo, "dapo": dapo, "rloo": rloo,
           "reinforce_pp": reinforce_pp, "ppo": ppo, "dpo": dpo, "ipo": ipo,
           "reward_model": reward_model}


def trained_parameters(model, config: dict) -> dict:
    """The parameters one step trains, by the names the contract reports their gradients under:
    ``model``'s, and for ``ppo`` the critic's (``config["value_model"]``) as ``value_model.<name>``."""
    named = dict(model.named_parameters())
    if config.get("algorithm") == "ppo":
        named.update({f"value_model.{n}": p for n, p in config["value_model"].named_parameters()})
    return named


def train_step(model, ref_model, batch: dict, config: dict):
    """One optimisation step's loss, as an adapter's ``train_step`` returns it (docs/contract.md,
    "Training steps", "Returns"): the recipe of ``config["algorithm"]``. With ``grad_accum = 1``
    the 0-dim loss attached to the parameters (the caller runs backward); otherwise the trainer's
    way: backward on each micro-batch's loss, the gradients summed in ``.grad``, returned as
    ``{"loss": float, "grads": {name: tensor}}`` (for ``ppo`` the value model's as
    ``value_model.<name>``) and ``.grad`` left as it was found. No optimizer step."""
    if not isinstance(config, dict) or config.get("algorithm") not in RECIPES:
        raise ValueError(f"config['algorithm'] must be one of {ALGORITHMS}, got "
                         f"{config.get('algorithm') if isinstance(config, dict) else config!r}")
    step = RECIPES[config["algorithm"]](model, ref_model, batch, config)
    if config.get("grad_accum", 1) == 1:
        return step.loss
    named = trained_parameters(model, config)
    found = {n: p.grad for n, p in named.items()}
    for p in named.values():
        p.grad = None
    for loss in step.micro:               # micro-batch by micro-batch, as a trainer accumulates
        loss.backward(retain_graph=True)
    grads = {n: (p.grad.detach().clone() if p.grad is not None else None)
             for n, p in named.items()}
    for n, p in named.items():
        p.grad = found[n]
    return {"loss": float(step.loss.detach()), "grads": grads}
