"""GRPO on a tiny causal LM, in one file (Dr. GRPO and DAPO are option sets of the same loop).

Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models",
2024, arXiv:2402.03300, Sec. 4.1 and Algorithm 1: for each batch of prompts, sample G completions
per prompt from the old policy, score them, take group-normalised advantages, and run several
epochs of PPO's clipped objective with a KL penalty to the frozen reference. Dr. GRPO (Liu et al.
2025, arXiv:2503.20783) and DAPO (Yu et al. 2025, arXiv:2503.14476) change only options.

The loss is ``refimpl.recipes.RECIPES[algorithm]``: the code that trains is the code that
certifies. RLOO (``rloo.py``) and REINFORCE++ (``reinforce_pp.py``) run this same loop with
their own recipe and defaults.

    python -m refimpl.train.grpo --out runs/grpo        (or: rlconform train grpo --out ...)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from refimpl import models, recipes
from refimpl.tasks import make_task
from refimpl.train import common


@dataclass
class GRPOConfig:
    algorithm: str = "grpo"
    """the recipe: grpo, dr_grpo, dapo (or rloo, reinforce_pp from their own files)"""
    task: str = "reverse"
    """the verifiable task (refimpl.tasks.TASKS)"""
    reward: str = "strict"
    """the task reward: strict (exact match) or partial (dense partial credit)"""
    steps: int = 150
    """optimisation steps: each samples a fresh batch"""
    seed: int = 0
    """seeds the SFT warm-up, the prompts and the sampling"""
    model: str | None = None
    """a local transformers causal-LM path to start from; default: the SFT warm-up of the task"""
    device: str = "cpu"
    """cpu, or cuda when present"""
    prompts_per_step: int = 32
    """prompts per batch; the batch holds prompts_per_step * group_size completions"""
    group_size: int = 8
    """G: completions per prompt, the group of the advantage"""
    epochs: int = 2
    """PPO epochs over each batch (mu in GRPO's Algorithm 1); the first is on-policy"""
    lr: float = 1e-4
    """Adam learning rate (1e-3 collapses the tiny policy; measured)"""
    temperature: float = 1.0
    """sampling temperature; also divides the logits of the policy and the reference"""
    beta: float = 0.04
    """KL coefficient (the reference sheet's typical value)"""
    kl_kind: str = "k3"
    """the KL estimator: k1, k2 or k3 (GRPO's Eq. 4 is k3)"""
    kl_in: str = "loss"
    """where the KL goes: "loss" (GRPO) or "reward" (subtracted from the score)"""
    clip_low: float = 0.2
    """epsilon: the ratio is clipped below at 1 - clip_low"""
    clip_high: float = 0.2
    """the ratio is clipped above at 1 + clip_high (DAPO's clip-higher: 0.28)"""
    dual_clip: float | None = None
    """dual-clip constant c > 1 for negative advantages, or None"""
    scale: str = "group"
    """advantage scale: "group" (GRPO), "batch", or "none" (Dr. GRPO)"""
    eps: float = 1e-6
    """added to the std of the advantage's denominator"""
    agg: str = "seq-mean-token-mean"
    """loss aggregation (refimpl.aggregation): GRPO's Eq. 3 is seq-mean-token-mean"""
    norm_len: float | None = None
    """the constant length of seq-mean-token-sum-norm (default: the task's max_new_tokens)"""
    gamma: float = 1.0
    """discount (REINFORCE++ returns)"""
    grad_accum: int = 1
    """micro-batches per optimisation step (gradients accumulated)"""
    max_grad_norm: float = 1.0
    """gradient clipping by global norm"""
    eval_every: int = 25
    """greedy evaluation on the task's held-out prompts every this many steps"""
    tensorboard: bool = False
    """also log to TensorBoard (needs the tensorboard package)"""
    arch: str = "llama"
    """architecture of the SFT warm-up model: llama (rotary) or gpt2 (absolute positions)"""
    sft_steps: int | None = None
    """SFT steps of the warm-up (default: per task, refimpl.train.common.SFT_STEPS)"""
    extra: dict = field(default_factory=dict)
    """free-form notes written with the config (e.g. the preset)"""


def recipe_config(cfg, task) -> dict:
    """The contract's config for the recipe, from the loop's fields. Dr. GRPO's constant
    normaliser defaults to the generation budget (``task.max_new_tokens``), not to the padded
    width of each batch, which varies with the longest completion sampled."""
    norm_len = cfg.norm_len
    if norm_len is None and cfg.agg == "seq-mean-token-sum-norm":
        norm_len = float(task.max_new_tokens)
    return recipes.default_config(
        cfg.algorithm, beta=cfg.beta, kl_kind=cfg.kl_kind, kl_in=cfg.kl_in,
        clip_low=cfg.clip_low, clip_high=cfg.clip_high, dual_clip=cfg.dual_clip,
        scale=cfg.scale, eps=cfg.eps, agg=cfg.agg, norm_len=norm_len, gamma=cfg.gamma,
        grad_accum=cfg.grad_accum, temperature=cfg.temperature)


def rollout(policy, tokenizer, task, prompts: list[str], cfg) -> dict:
    """Sample G completions per prompt, score them, and record the rollout policy's
    log-probabilities (the ``old_logp`` of the contract's batch)."""
    group_prompts = [p for p in prompts for _ in range(cfg.group_size)]
    batch = common.sample(policy, tokenizer, group_prompts, task.max_new_tokens, cfg.temperature)
    reward_fn = task.strict_reward if cfg.reward == "strict" else task.partial_reward
    device = batch["prompt_ids"].device
    batch["scores"] = torch.tensor([reward_fn(p, c) for p, c in
                                    zip(group_prompts, batch["completions"])], device=device)
    batch["group_ids"] = torch.arange(len(prompts), device=device).repeat_interleave(cfg.group_size)
    with torch.no_grad():
        batch["old_logp"] = recipes.completion_logprobs(
            policy, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
            batch["completion_mask"], cfg.temperature)
    batch["prompts"] = group_prompts
    return batch


def tensors(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def train(cfg: GRPOConfig, out_dir=None, progress: bool | None = None) -> list[dict]:
    """Run the loop; returns the per-step metrics (also written to ``out_dir``)."""
    torch.set_num_threads(1) if cfg.device == "cpu" else None
    common.seed_everything(cfg.seed)
    task = make_task(cfg.task, seed=cfg.seed)
    start = cfg.model or common.sft_policy(task, cfg.seed, cfg.sft_steps, cfg.arch)
    tokenizer = models.load_tokenizer(start)
    policy = models.load_causal_lm(start).to(cfg.device)
    reference = models.load_causal_lm(start).to(cfg.device).requires_grad_(False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    recipe, rcfg = recipes.RECIPES[cfg.algorithm], recipe_config(cfg, task)
    prompt_rng = torch.Generator().manual_seed(cfg.seed)
    run = common.Run(out_dir, cfg, cfg.steps, progress)
    t0 = time.time()

    for step in range(cfg.steps + 1):
        row = {"step": step}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row["eval_accuracy"] = common.greedy_accuracy(policy, tokenizer, task)
        if step == cfg.steps:                 # the last row only evaluates
            run.log(row | {"time_s": time.time() - t0})
            break
        idx = torch.randint(len(task.train_prompts), (cfg.prompts_per_step,),
                            generator=prompt_rng).tolist()
        batch = rollout(policy, tokenizer, task, [task.train_prompts[i] for i in idx], cfg)
        entropy = common.token_entropy(policy, batch, cfg.temperature)   # the rollout policy's

        for epoch in range(cfg.epochs):       # epoch 0 is on-policy: ratio 1
            policy.train()
            out = recipe(policy, reference, tensors(batch), rcfg)
            optimizer.zero_grad()
            for loss in out.micro:            # gradient accumulation over micro-batches
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            policy.eval()
            if epoch == 0:
                first = out

        mask = batch["completion_mask"]
        row.update(loss=first.loss.item(), reward=batch["scores"].mean().item(),
                   grad_norm=float(grad_norm), length=mask.sum(1).float().mean().item(),
                   **common.red_flags(batch["scores"], batch["group_ids"], batch["completions"],
                                      first.stats["kl"], entropy))
        decisive = getattr(task, "decisive_index", None)
        if decisive is not None:              # credit assignment: one token decides the reward
            row["credit_share"] = common.credit_share(first.advantages, mask, decisive)
            process = common.process_advantages(task, batch["prompts"], batch["completions"],
                                                batch["group_ids"].cpu(), mask.shape)
            row["credit_share_process"] = common.credit_share(process, mask.cpu(), decisive)
        run.log(row | {"time_s": time.time() - t0})
    return run.finish(policy, tokenizer, f"{cfg.algorithm} on {cfg.task}, seed {cfg.seed}")
