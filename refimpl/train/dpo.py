"""DPO on a tiny causal LM, in one file (IPO is an option set of the same loop, ``ipo.py``).

Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
2023, arXiv:2305.18290, Sec. 4, Eq. 7:

    loss = -log sigmoid(beta * ((log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))))

on a fixed, offline set of preference pairs (x, y_w, y_l); pi starts from the SFT policy and
pi_ref is a frozen copy of it. Label smoothing (``label_smoothing > 0``) is the conservative DPO
of Mitchell's note (cDPO). The log-probabilities are sequence sums at temperature 1.

The loss is ``refimpl.recipes.RECIPES[algorithm]`` (``dpo`` or ``ipo``): the code that trains is
the code that certifies. The pairs are ``Task.preference_pairs(n_pairs, seed)``: the chosen
completion is the task's target, the rejected one a corruption of it (a wrong answer).

Logged per step
- ``loss``; ``margin``: the mean implicit reward margin h = (pc - rc) - (pr - rr) of the batch
  (without beta; ``StepLoss.stats["margin"]``), before the step's update; ``pair_accuracy``: the
  share of the batch's pairs with h > 0 (a tie counts one half);
- ``chosen_log_ratio``: the mean over the batch's chosen completions of the sequence sum of
  (logp - ref_logp). It is not a KL (it can be negative: it is measured on the data, not on the
  policy's own samples), so it is not logged as ``kl``: DPO never samples;
- at eval steps: ``eval_accuracy`` (greedy, strict, on the task's held-out prompts),
  ``eval_margin`` and ``eval_pair_accuracy``: the mean h and the share of h > 0 on a fixed set
  of held-out pairs built on the eval prompts (``heldout_pairs``).

Measured (reverse, defaults, one CPU thread, 25 s beside another run): greedy eval accuracy 0.425 ->
0.64 (seed 0), 0.575 -> 0.725 (seed 1), 0.485 -> 0.725 (seed 2); held-out margin 0 -> 3.0 / 3.7 / 3.1.

    from refimpl.train import dpo; dpo.train(dpo.DPOConfig(), out_dir="runs/dpo")
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import torch

from refimpl import models, recipes
from refimpl.logprobs import sequence_logprob
from refimpl.tasks import Task, make_task
from refimpl.train import common

__all__ = ["DPOConfig", "chosen_log_ratio", "encode_pairs", "heldout_pairs", "recipe_config",
           "train"]


@dataclass
class DPOConfig:
    algorithm: str = "dpo"
    """the recipe: dpo (or ipo, from ipo.py)"""
    task: str = "reverse"
    """the verifiable task (refimpl.tasks.TASKS) whose pairs are learned"""
    steps: int = 100
    """optimisation steps: each on a batch of pairs drawn from the fixed pool (measured on
    reverse, lr 1e-4: eval accuracy peaks near here; by 300 steps the margin keeps growing while
    eval accuracy falls below the SFT start, as the chosen log-probability falls too)"""
    seed: int = 0
    """seeds the SFT warm-up, the pair pool, the held-out pairs and the batch order"""
    model: str | None = None
    """a local transformers causal-LM path to start from; default: the SFT warm-up of the task"""
    device: str = "cpu"
    """cpu, or cuda when present"""
    pairs_per_step: int = 32
    """preference pairs per batch (drawn with replacement from the pool)"""
    n_pairs: int = 2000
    """size of the offline pair pool, drawn once with task.preference_pairs(n_pairs, seed)"""
    lr: float = 1e-4
    """Adam learning rate (measured on reverse, seed 0: 1e-4 raises eval accuracy steadily;
    3e-4 overshoots and loses accuracy)"""
    beta: float = 0.1
    """DPO's beta: the strength of the implicit KL to the reference"""
    label_smoothing: float = 0.0
    """conservative DPO: the probability that a label is flipped (0: plain DPO)"""
    grad_accum: int = 1
    """micro-batches per optimisation step (gradients accumulated)"""
    max_grad_norm: float = 1.0
    """gradient clipping by global norm"""
    eval_every: int = 25
    """greedy evaluation and held-out margin every this many steps"""
    n_eval_pairs: int = 200
    """held-out pairs (on the task's eval prompts) for eval_margin"""
    tensorboard: bool = False
    """also log to TensorBoard (needs the tensorboard package)"""
    arch: str = "llama"
    """architecture of the SFT warm-up model: llama (rotary) or gpt2 (absolute positions)"""
    sft_steps: int | None = None
    """SFT steps of the warm-up (default: per task, refimpl.train.common.SFT_STEPS)"""
    extra: dict = field(default_factory=dict)
    """free-form notes written with the config (e.g. the preset)"""


def recipe_config(cfg) -> dict:
    """The contract's config for the recipe (dpo: beta, label_smoothing; ipo: tau)."""
    if cfg.algorithm == "dpo":
        return recipes.default_config("dpo", beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                                      grad_accum=cfg.grad_accum)
    if cfg.algorithm == "ipo":
        if not hasattr(cfg, "tau"):
            raise ValueError("algorithm 'ipo' needs a tau: use refimpl.train.ipo.IPOConfig")
        return recipes.default_config("ipo", tau=cfg.tau, grad_accum=cfg.grad_accum)
    raise ValueError(f"algorithm must be 'dpo' or 'ipo', got {cfg.algorithm!r}")


def heldout_pairs(task: Task, n: int, seed: int, bias: str | None = None
                  ) -> list[tuple[str, str, str]]:
    """``n`` pairs ``(prompt, chosen, rejected)`` on the task's EVAL prompts, made exactly as
    ``task.preference_pairs(n, seed, bias=bias)`` makes the training pairs (the task with its two
    splits swapped draws them), so they follow the training distribution on unseen prompts."""
    swapped = dataclasses.replace(task, train_prompts=task.eval_prompts,
                                  eval_prompts=task.train_prompts)
    return swapped.preference_pairs(n, seed, bias=bias)


def encode_pairs(tokenizer, pairs: list[tuple[str, str, str]], device="cpu") -> dict:
    """The contract's preference batch: prompts left-padded, chosen and rejected completions
    (each with ``<eos>``) right-padded."""
    prompts, chosen, rejected = zip(*pairs)
    batch = {}
    batch["prompt_ids"], batch["prompt_mask"] = common.encode_prompts(tokenizer, list(prompts),
                                                                      device)
    batch["chosen_ids"], batch["chosen_mask"] = common.encode_completions(tokenizer, list(chosen),
                                                                          device)
    batch["rejected_ids"], batch["rejected_mask"] = common.encode_completions(
        tokenizer, list(rejected), device)
    return batch


@torch.no_grad()
def chosen_log_ratio(policy, reference, batch: dict) -> float:
    """Mean over the batch's chosen completions of sum_t (logp - ref_logp)."""
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["chosen_ids"], batch["chosen_mask"])
    mask = batch["chosen_mask"].bool()
    logp = sequence_logprob(recipes.completion_logprobs(policy, *args), mask)
    ref = sequence_logprob(recipes.completion_logprobs(reference, *args), mask)
    return float((logp - ref).mean())


def _pair_accuracy(margins) -> float:
    """Share of pairs the policy orders as labelled; a tie (margin exactly 0, as at the start,
    where the policy is the reference) counts one half."""
    return ((margins > 0).float() + 0.5 * (margins == 0).float()).mean().item()


def train(cfg: DPOConfig, out_dir=None, progress: bool | None = None) -> list[dict]:
    """Run the loop; returns the per-step metrics (also written to ``out_dir``)."""
    torch.set_num_threads(1) if cfg.device == "cpu" else None
    common.seed_everything(cfg.seed)
    task = make_task(cfg.task, seed=cfg.seed)
    start = cfg.model or common.sft_policy(task, cfg.seed, cfg.sft_steps, cfg.arch)
    tokenizer = models.load_tokenizer(start)
    policy = models.load_causal_lm(start).to(cfg.device)
    reference = models.load_causal_lm(start).to(cfg.device).requires_grad_(False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    recipe, rcfg = recipes.RECIPES[cfg.algorithm], recipe_config(cfg)
    pairs = task.preference_pairs(cfg.n_pairs, cfg.seed)
    heldout = encode_pairs(tokenizer, heldout_pairs(task, cfg.n_eval_pairs, cfg.seed + 1),
                           cfg.device)
    pair_rng = torch.Generator().manual_seed(cfg.seed)
    run = common.Run(out_dir, cfg, cfg.steps, progress)
    t0 = time.time()

    for step in range(cfg.steps + 1):
        row = {"step": step}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row["eval_accuracy"] = common.greedy_accuracy(policy, tokenizer, task)
            with torch.no_grad():
                h = recipe(policy, reference, heldout, rcfg | {"grad_accum": 1}).stats["margin"]
            row.update(eval_margin=h.mean().item(), eval_pair_accuracy=_pair_accuracy(h))
        if step == cfg.steps:                 # the last row only evaluates
            run.log(row | {"time_s": time.time() - t0})
            break
        idx = torch.randint(len(pairs), (cfg.pairs_per_step,), generator=pair_rng).tolist()
        batch = encode_pairs(tokenizer, [pairs[i] for i in idx], cfg.device)
        log_ratio = chosen_log_ratio(policy, reference, batch)

        policy.train()
        out = recipe(policy, reference, batch, rcfg)
        optimizer.zero_grad()
        for loss in out.micro:                # gradient accumulation over micro-batches
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        policy.eval()

        h = out.stats["margin"]
        row.update(loss=out.loss.item(), margin=h.mean().item(),
                   pair_accuracy=_pair_accuracy(h), chosen_log_ratio=log_ratio,
                   grad_norm=float(grad_norm))
        run.log(row | {"time_s": time.time() - t0})
    return run.finish(policy, tokenizer, f"{cfg.algorithm} on {cfg.task}, seed {cfg.seed}")
