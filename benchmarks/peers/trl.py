"""TRL's own implementations, as the benchmark calls them (trl 1.16.0).

TRL keeps its math inline in trainer methods. What is timed is the method whose cost is the
math, called unbound on an instance made once per case with ``object.__new__(<Trainer>)`` and
the attributes ``__init__`` copies from a real config (built by the conformance adapter's own
helpers, ``conformance/adapters/trl.py``: ``_grpo_trainer``, ``_config``, ``_metric_containers``):

- ``ppo_clip_loss``, ``policy_gradient_loss``: ``GRPOTrainer._compute_loss`` at
  ``loss_type="dapo"`` (token-mean), ``beta=0``; the model forward
  ``_get_per_token_logps_and_entropies`` is the adapter's stub returning the given ``logp``, the
  advantages go in as GRPO's ``(B,)`` (column 0 of the case's per-token layout). The timed call
  includes the metrics ``_compute_loss`` logs (clip ratios, entropy: a few reductions and
  ``.item()`` calls), which are part of the method.
- ``dpo_loss``, ``ipo_loss``: ``DPOTrainer._compute_loss`` on the whole batch of N pairs at once
  (``precompute_ref_log_probs``: the reference log-probs are inputs); the policy forward is a stub
  whose ``log_probs`` are the (2N, 1) one-token completions ``[chosen; rejected]``.
- ``bradley_terry_loss``: ``RewardTrainer.compute_loss`` on the N pairs at once; the reward
  model is a stub whose ``logits`` are the (2N, 1) rewards ``[chosen; rejected]``.
- ``token_logprobs``: ``trl.trainer.utils.selective_log_softmax`` (on a CPU, its PyTorch path;
  on CUDA TRL's Triton kernel where it applies, utils.py:572).

Everything but the call (the config, the trainer instance, the stubs, the reshaped inputs) is
made in ``prepare``, untimed.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import torch

from benchmarks.peers import Entry

FRAMEWORK = "trl"
VERSION = "1.16.0"          # the wheel the line numbers below are read from (pins.PINS["trl"])

GT = "trl/trainer/grpo_trainer.py"
RT = "trl/trainer/rloo_trainer.py"
DT = "trl/trainer/dpo_trainer.py"
RWT = "trl/trainer/reward_trainer.py"
UT = "trl/trainer/utils.py"


def _at(where: str) -> str:
    return f"{where} (trl {VERSION})"


def available() -> bool:
    """TRL and its trainers import here."""
    if importlib.util.find_spec("trl") is None:
        return False
    try:
        from trl import DPOTrainer, GRPOTrainer, RewardTrainer  # noqa: F401
        from trl.trainer.utils import selective_log_softmax  # noqa: F401
    except Exception:                                     # noqa: BLE001
        return False
    return True


def _adapter():
    from conformance.adapters import trl as adapter
    return adapter


# --- GRPO: _compute_loss --------------------------------------------------------------------------

def _grpo_prepare(kw: dict, on_policy: bool):
    A = _adapter()
    t = A._trl()
    logp, mask = kw["logp"], kw["mask"]
    B, T = logp.shape
    clip = kw.get("clip_low", 0.2)
    args = A._config(t.GRPOConfig, loss_type="dapo", beta=0.0, epsilon=clip,
                     epsilon_high=clip if kw.get("clip_high") is None else kw["clip_high"],
                     max_completion_length=T)
    tr = A._grpo_trainer(args, per_token_logps=logp)      # the forward: yields logp
    device = logp.device
    completion_mask = mask.to(torch.long)                 # grpo_trainer.py:2453
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long, device=device),
              "prompt_mask": torch.ones(B, 1, dtype=torch.long, device=device),
              "completion_ids": torch.zeros(B, T, dtype=torch.long, device=device),
              "completion_mask": completion_mask,
              "advantages": kw["advantages"][:, 0].detach().contiguous(),     # GRPO's (B,)
              "num_items_in_batch": completion_mask.sum()}                    # grpo_trainer.py:2498
    if not on_policy:
        inputs["old_per_token_logps"] = kw["old_logp"]
    fn, model = t.GRPOTrainer._compute_loss, tr.model
    return lambda: fn(tr, model, inputs)


def _pg_expected(kw: dict):
    import refimpl
    # on policy the ratio is exp(logp - logp.detach()) = 1: the per-token loss is -A
    return refimpl.aggregate(-kw["advantages"], kw["mask"], mode=kw.get("agg", "token-mean"))


# --- DPO / IPO: DPOTrainer._compute_loss on N pairs --------------------------------------------------

def _dpo_prepare(loss_type: str, beta_key: str):
    def prepare(kw: dict):
        A = _adapter()
        pc, pr = kw["policy_chosen_logps"], kw["policy_rejected_logps"]
        rc, rr = kw["ref_chosen_logps"], kw["ref_rejected_logps"]
        n, device = pc.shape[0], pc.device
        tr = A._bare_dpo_trainer(loss_type, kw[beta_key])        # as the adapter builds it
        # the policy forward's output: one-token completions, the batch is [chosen; rejected]
        log_probs = torch.cat([pc, pr]).unsqueeze(1)                      # (2N, 1)
        zeros = torch.zeros(2 * n, 1, dtype=pc.dtype, device=device)
        outputs = SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros,
                                  is_top1=torch.zeros(2 * n, 1, dtype=torch.bool, device=device),
                                  aux_loss=None)
        tr.model = A._Model(lambda **kwargs: outputs)
        inputs = {"input_ids": torch.zeros(2 * n, 2, dtype=torch.long, device=device),
                  "attention_mask": torch.ones(2 * n, 2, dtype=torch.long, device=device),
                  "completion_mask": torch.tensor([[0, 1]], device=device).expand(2 * n, 2),
                  "ref_chosen_logps": rc.detach(), "ref_rejected_logps": rr.detach()}
        fn, model = type(tr)._compute_loss, tr.model
        return lambda: fn(tr, model, inputs, return_outputs=False)
    return prepare


def _pair_mean(function: str):
    def expected(kw: dict):
        import refimpl
        return getattr(refimpl, function)(**kw).mean()
    return expected


# --- Bradley-Terry: RewardTrainer.compute_loss on N pairs ------------------------------------------

def _reward_prepare(kw: dict):
    A = _adapter()
    t = A._trl()
    chosen, rejected = kw["chosen_rewards"], kw["rejected_rewards"]
    n, device = chosen.shape[0], chosen.device
    args = A._config(t.RewardConfig)
    tr = object.__new__(t.RewardTrainer)
    tr.args = args
    A._metric_containers(tr, 1)
    outputs = SimpleNamespace(logits=torch.cat([chosen, rejected]).unsqueeze(-1))   # (2N, 1)
    tr.model = A._Model(lambda **kwargs: outputs)
    ids = torch.zeros(2 * n, 1, dtype=torch.long, device=device)
    mask = torch.ones(2 * n, 1, dtype=torch.long, device=device)
    fn, model = t.RewardTrainer.compute_loss, tr.model
    # compute_loss writes inputs["use_cache"]; a fresh dict per call costs nothing measurable
    return lambda: fn(tr, model, {"input_ids": ids, "attention_mask": mask})


# --- token log-probs ----------------------------------------------------------------------------

def _logprobs_prepare(kw: dict):
    from trl.trainer.utils import selective_log_softmax
    logits, tokens = kw["logits"], kw["tokens"]
    return lambda: selective_log_softmax(logits, tokens)


# --- the entries ----------------------------------------------------------------------------------

_BATCH_MEAN_DPO = (f"returns the batch mean of the per-pair losses (loss += per_sequence_loss.mean(), "
                   f"{DT}:1528), not the (N,) losses: expected is refimpl's losses averaged")


def entries() -> dict[str, Entry]:
    return {
        "ppo_clip_loss": Entry(
            prepare=lambda kw: _grpo_prepare(kw, on_policy=False),
            source=_at(f"{GT}:3020 (GRPOTrainer._compute_loss; clipped objective :3113-3120, "
                       f"dapo token-mean :3168-3173)")),
        "policy_gradient_loss": Entry(
            prepare=lambda kw: _grpo_prepare(kw, on_policy=True),
            expected=_pg_expected,
            deviation=(f"on policy TRL's per-token loss is -A exp(logp - logp.detach()) "
                       f"({GT}:3066, :3120), whose value is -A, not -A logp (the gradient is "
                       f"the same): expected is the token-mean of -A"),
            source=_at(f"{GT}:3020 (GRPOTrainer._compute_loss without old_per_token_logps, :3066)")),
        "dpo_loss": Entry(
            prepare=_dpo_prepare("sigmoid", "beta"),
            expected=_pair_mean("dpo_loss"),
            deviation=_BATCH_MEAN_DPO,
            source=_at(f"{DT}:1285 (DPOTrainer._compute_loss, loss_type 'sigmoid' :1388)")),
        "ipo_loss": Entry(
            prepare=_dpo_prepare("ipo", "tau"),
            expected=_pair_mean("ipo_loss"),
            deviation=(f"{_BATCH_MEAN_DPO}; TRL also divides each log-ratio by its completion's "
                       f"token count ({DT}:1399-1402): the pairs go in as one-token completions "
                       f"(the cases hold sequence log-probs), so that division is by 1"),
            source=_at(f"{DT}:1285 (DPOTrainer._compute_loss, loss_type 'ipo' :1393-1404)")),
        "bradley_terry_loss": Entry(
            prepare=_reward_prepare,
            expected=_pair_mean("bradley_terry_loss"),
            deviation=(f"returns the batch mean of the per-pair losses "
                       f"(-logsigmoid(chosen - rejected).mean(), {RWT}:792), not the (N,) losses: "
                       f"expected is refimpl's losses averaged"),
            source=_at(f"{RWT}:778 (RewardTrainer.compute_loss)")),
        "token_logprobs": Entry(
            prepare=_logprobs_prepare,
            source=_at(f"{UT}:538 (selective_log_softmax)")),
    }


_INLINE_ADV = "inline in {where}, a method that also generates, calls the reward functions and logs"

SKIPPED: dict[str, str] = {
    "discounted_returns": "TRL 1.16.0 has no PPO trainer: no returns, GAE or value loss (trl/trainer/)",
    "gae": "TRL 1.16.0 has no PPO trainer: no returns, GAE or value loss (trl/trainer/)",
    "value_loss": "TRL 1.16.0 has no PPO trainer: no returns, GAE or value loss (trl/trainer/)",
    "kl_estimate": (f"the k3 term is inline in GRPOTrainer._compute_loss ({GT}:3098-3105), added to "
                    "the per-token loss before the aggregation: no call returns it, and the whole "
                    "loss's cost is not the estimator's"),
    "kl_penalized_rewards": (f"RLOO subtracts beta * the sequence-level k1 KL from the scores inline in "
                             f"RLOOTrainer._generate_and_score_completions ({RT}:1664-1673), with "
                             "generation, reward calls and metrics around it; no separable function"),
    "group_normalized_advantages": (_INLINE_ADV.format(
        where=f"GRPOTrainer._generate_and_score_completions ({GT}:2765-2787)")
        + "; no separable function"),
    "leave_one_out_advantages": (_INLINE_ADV.format(
        where=f"RLOOTrainer._generate_and_score_completions ({RT}:1675-1690)")
        + "; no separable function"),
    "batch_normalized_advantages": (f"no per-token whitening: RLOO's normalize_advantages "
                                    f"({RT}:1695-1696) and GRPO's scale_rewards='batch' ({GT}:2777) "
                                    "scale per-sequence advantages, inline in "
                                    "_generate_and_score_completions"),
    "aggregate": (f"the loss_type normalisation is inline at the end of GRPOTrainer._compute_loss "
                  f"({GT}:3153-3173): reachable only through the whole GRPO loss, whose cost is not "
                  "the aggregation's"),
    "sequence_logprob": (f"the token sum is inline in DPOTrainer._compute_loss "
                         f"(per_token_logps.sum(dim=1), {DT}:1304), right after the model forward; "
                         "no separable function"),
}
