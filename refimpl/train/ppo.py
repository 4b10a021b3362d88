"""PPO with a value model and GAE on a tiny causal LM, in one file; also PPO against a learned
reward model (``ppo_rm.py`` sets ``reward_model``).

- Schulman et al., "Proximal Policy Optimization Algorithms", 2017, arXiv:1707.06347, Algorithm 1,
  Eq. 7 (clipped surrogate) and Eq. 9 (value loss);
- Schulman et al., "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
  2015, arXiv:1506.02438, Eq. 16 (GAE);
- Ouyang et al., "Training language models to follow instructions with human feedback" (InstructGPT),
  2022, arXiv:2203.02155, Eq. 2: the score of the whole completion at its last token, a per-token
  KL penalty to the frozen reference in the reward.

Each step samples a batch from the current policy, records the rollout log-probabilities and the
critic's values, then runs ``epochs`` passes of ``refimpl.recipes.ppo``: the clipped policy loss
on GAE advantages (whitened) plus ``vf_coef`` times the (clipped) value loss. The critic is a
token classifier initialised from the policy's weights (a fresh one-output head), as InstructGPT
initialises its value function from the reward model and TRL's PPO from a model checkpoint.

    rlconform train ppo --out runs/ppo
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import AutoConfig, AutoModelForTokenClassification

from refimpl import models, recipes
from refimpl.tasks import make_task
from refimpl.train import common
from refimpl.train.grpo import rollout, tensors


@dataclass
class PPOConfig:
    algorithm: str = "ppo"
    """the recipe: refimpl.recipes.ppo"""
    task: str = "reverse"
    """the verifiable task (refimpl.tasks.TASKS)"""
    reward: str = "strict"
    """the task reward: strict or partial (ignored when reward_model is set)"""
    reward_model: str | None = None
    """a local sequence-classifier path: score completions with it instead of the task's rule
    (the proxy reward of ppo_rm); the rule-based reward is still logged as true_reward"""
    steps: int = 150
    """optimisation steps, each on a fresh batch"""
    seed: int = 0
    """seeds the SFT warm-up, the prompts and the sampling"""
    model: str | None = None
    """a local causal-LM path to start from; default: the SFT warm-up of the task"""
    device: str = "cpu"
    """cpu, or cuda when present"""
    prompts_per_step: int = 32
    """prompts per batch"""
    group_size: int = 8
    """completions per prompt (PPO needs no groups; the red flags count distinct ones)"""
    epochs: int = 2
    """PPO epochs over each batch (K in Algorithm 1)"""
    lr: float = 1e-4
    """Adam learning rate of the policy"""
    critic_lr: float = 1e-3
    """Adam learning rate of the value model"""
    temperature: float = 1.0
    """sampling temperature; also divides the logits of the policy and the reference"""
    beta: float = 0.04
    """KL coefficient of the per-token reward penalty"""
    kl_kind: str = "k1"
    """the per-token KL estimator in the reward (InstructGPT: the log-ratio, k1)"""
    clip_low: float = 0.2
    """epsilon: ratio clipped below at 1 - clip_low"""
    clip_high: float = 0.2
    """ratio clipped above at 1 + clip_high"""
    dual_clip: float | None = None
    """dual-clip constant c > 1, or None"""
    gamma: float = 1.0
    """discount (1.0: the score arrives once, at the end)"""
    lam: float = 0.95
    """GAE's lambda"""
    vf_coef: float = 0.5
    """weight of the value loss"""
    value_clip: float | None = 0.2
    """clip of the value update around the rollout values, or None"""
    whiten: bool = True
    """whiten the advantages over the batch"""
    agg: str = "token-mean"
    """loss aggregation (refimpl.aggregation)"""
    norm_len: float | None = None
    """the constant length of seq-mean-token-sum-norm"""
    grad_accum: int = 1
    """micro-batches per optimisation step"""
    max_grad_norm: float = 1.0
    """gradient clipping by global norm, per model"""
    eval_every: int = 25
    """greedy evaluation on held-out prompts every this many steps"""
    tensorboard: bool = False
    """also log to TensorBoard (needs the tensorboard package)"""
    arch: str = "llama"
    """architecture of the SFT warm-up model"""
    sft_steps: int | None = None
    """SFT steps of the warm-up (default: per task)"""
    extra: dict = field(default_factory=dict)
    """free-form notes written with the config"""


def recipe_config(cfg: PPOConfig, value_model) -> dict:
    return recipes.default_config(
        "ppo", beta=cfg.beta, kl_kind=cfg.kl_kind, kl_in="reward", clip_low=cfg.clip_low,
        clip_high=cfg.clip_high, dual_clip=cfg.dual_clip, gamma=cfg.gamma, lam=cfg.lam,
        vf_coef=cfg.vf_coef, value_clip=cfg.value_clip, whiten=cfg.whiten, agg=cfg.agg,
        norm_len=cfg.norm_len, grad_accum=cfg.grad_accum, temperature=cfg.temperature,
        value_model=value_model)


def train(cfg: PPOConfig, out_dir=None, progress: bool | None = None) -> list[dict]:
    torch.set_num_threads(1) if cfg.device == "cpu" else None
    common.seed_everything(cfg.seed)
    task = make_task(cfg.task, seed=cfg.seed)
    start = cfg.model or common.sft_policy(task, cfg.seed, cfg.sft_steps, cfg.arch)
    tokenizer = models.load_tokenizer(start)
    policy = models.load_causal_lm(start).to(cfg.device)
    reference = models.load_causal_lm(start).to(cfg.device).requires_grad_(False)
    critic_config = AutoConfig.from_pretrained(str(start), local_files_only=True, num_labels=1)
    critic_config.classifier_dropout = 0.0    # the token-classifier head defaults to 0.1
    critic = AutoModelForTokenClassification.from_pretrained(
        str(start), config=critic_config, local_files_only=True,
        dtype=torch.float32).to(cfg.device).eval()
    scorer = None
    if cfg.reward_model:
        scorer = models.load_reward_model(cfg.reward_model).to(cfg.device).requires_grad_(False)
    optimizer = torch.optim.Adam([{"params": policy.parameters(), "lr": cfg.lr},
                                  {"params": critic.parameters(), "lr": cfg.critic_lr}])
    rcfg = recipe_config(cfg, critic)
    prompt_rng = torch.Generator().manual_seed(cfg.seed)
    run = common.Run(out_dir, cfg, cfg.steps, progress)
    t0 = time.time()

    for step in range(cfg.steps + 1):
        row = {"step": step}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row["eval_accuracy"] = common.greedy_accuracy(policy, tokenizer, task)
        if step == cfg.steps:
            run.log(row | {"time_s": time.time() - t0})
            break
        idx = torch.randint(len(task.train_prompts), (cfg.prompts_per_step,),
                            generator=prompt_rng).tolist()
        batch = rollout(policy, tokenizer, task, [task.train_prompts[i] for i in idx], cfg)
        true_reward = batch["scores"]
        if scorer is not None:                # the proxy: the learned reward model's score
            with torch.no_grad():
                batch["scores"] = recipes.sequence_scores(
                    scorer, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                    batch["completion_mask"])
        with torch.no_grad():
            batch["old_values"] = recipes.completion_values(
                critic, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                batch["completion_mask"])

        entropy = common.token_entropy(policy, batch, cfg.temperature)   # the rollout policy's

        for epoch in range(cfg.epochs):
            policy.train(), critic.train()
            out = recipes.ppo(policy, reference, tensors(batch), rcfg)
            optimizer.zero_grad()
            for loss in out.micro:
                loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
            optimizer.step()
            policy.eval(), critic.eval()
            if epoch == 0:
                first = out

        mask = batch["completion_mask"]
        row.update(loss=first.loss.item(), reward=true_reward.mean().item(),
                   grad_norm=float(grad_norm), length=mask.sum(1).float().mean().item(),
                   value_mean=batch["old_values"][mask.bool()].mean().item(),
                   # degenerate groups: of the reward that drives the advantages (the proxy)
                   **common.red_flags(batch["scores"], batch["group_ids"], batch["completions"],
                                      first.stats["kl"], entropy))
        if scorer is not None:
            row.update(proxy_reward=batch["scores"].mean().item(),
                       true_reward=true_reward.mean().item())
            row["flag_reward_hacking"] = common.reward_hacking(run.rows + [row])
        decisive = getattr(task, "decisive_index", None)
        if decisive is not None:
            row["credit_share"] = common.credit_share(first.advantages, mask, decisive)
        run.log(row | {"time_s": time.time() - t0})
    return run.finish(policy, tokenizer, f"{cfg.algorithm} on {cfg.task}, seed {cfg.seed}")
