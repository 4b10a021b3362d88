"""A Bradley-Terry reward model on a tiny transformer, in one file.

Ouyang et al., "Training language models to follow instructions with human feedback"
(InstructGPT), 2022, arXiv:2203.02155, Sec. 3.5, Eq. 1: the mean over comparisons of

    loss = -log sigmoid(r(x, y_w) - r(x, y_l))

the Bradley-Terry model of Bradley and Terry, "Rank Analysis of Incomplete Block Designs", 1952,
with r a sequence classifier read at the last real token. As InstructGPT starts its reward model
from the SFT model, the classifier here is the SFT policy's transformer with a fresh one-output
head (``AutoModelForSequenceClassification.from_pretrained(sft_path, num_labels=1)``).

The loss is ``refimpl.recipes.reward_model``. The pairs are ``Task.preference_pairs(n_pairs,
seed, bias=bias)``: with ``bias=None`` the chosen completion is the target and the rejected one a
corruption of it; with ``bias="longer"`` the chosen one is always the longer, right or wrong, so
the fitted model rewards length (the proxy that ``ppo_rm.py`` then over-optimises).

Logged per step
- ``loss``; ``margin``: the mean score(chosen) - score(rejected) of the batch, before the step's
  update; ``pair_accuracy``: the share of the batch's pairs with a positive margin;
- at eval steps: ``eval_pair_accuracy``, the share of held-out pairs (on the task's eval prompts,
  drawn with the SAME bias as training) that the model orders as the labeller did: under
  ``bias="longer"`` that is agreement with the biased labeller, not correctness;
  ``eval_margin``, their mean margin; and ``strict_pair_accuracy``, for information, the share of
  held-out UNBIASED pairs (target vs. a corruption) where the model prefers the target.

The trained classifier and its tokenizer are saved in ``out_dir/model``
(``models.load_reward_model`` reloads it).

    from refimpl.train import reward_model; reward_model.train(reward_model.RewardModelConfig(), "runs/rm")
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForSequenceClassification

from refimpl import models, recipes
from refimpl.tasks import make_task
from refimpl.train import common
from refimpl.train.dpo import encode_pairs, heldout_pairs

__all__ = ["RewardModelConfig", "train"]


@dataclass
class RewardModelConfig:
    algorithm: str = "reward_model"
    """the recipe: refimpl.recipes.reward_model"""
    task: str = "reverse"
    """the verifiable task (refimpl.tasks.TASKS) whose pairs are learned"""
    bias: str | None = None
    """the labeller: None (the target beats a corruption) or "longer" (the longer one wins)"""
    steps: int = 200
    """optimisation steps: each on a batch of pairs drawn from the fixed pool (measured on
    reverse: held-out pair accuracy 0.985 / 1.0 / 0.905 at step 200 for seeds 0 / 1 / 2)"""
    seed: int = 0
    """seeds the SFT warm-up, the pair pool, the held-out pairs and the batch order"""
    model: str | None = None
    """a local causal-LM path whose transformer the classifier starts from; default: the SFT
    warm-up of the task"""
    device: str = "cpu"
    """cpu, or cuda when present"""
    pairs_per_step: int = 32
    """preference pairs per batch (drawn with replacement from the pool)"""
    n_pairs: int = 2000
    """size of the pair pool, drawn once with task.preference_pairs(n_pairs, seed, bias=bias)"""
    lr: float = 3e-4
    """Adam learning rate (measured on reverse, seed 0: 1e-3 is noisier, 1e-4 slower)"""
    grad_accum: int = 1
    """micro-batches per optimisation step (gradients accumulated)"""
    max_grad_norm: float = 1.0
    """gradient clipping by global norm"""
    eval_every: int = 25
    """held-out pair accuracy every this many steps"""
    n_eval_pairs: int = 200
    """held-out pairs (on the task's eval prompts) for eval_pair_accuracy and strict_pair_accuracy"""
    tensorboard: bool = False
    """also log to TensorBoard (needs the tensorboard package)"""
    arch: str = "llama"
    """architecture of the SFT warm-up model: llama (rotary) or gpt2 (absolute positions)"""
    sft_steps: int | None = None
    """SFT steps of the warm-up (default: per task, refimpl.train.common.SFT_STEPS)"""
    extra: dict = field(default_factory=dict)
    """free-form notes written with the config"""


@torch.no_grad()
def _margins(model, batch: dict, rcfg: dict) -> torch.Tensor:
    return recipes.reward_model(model, None, batch, rcfg | {"grad_accum": 1}).stats["margin"]


def train(cfg: RewardModelConfig, out_dir=None, progress: bool | None = None) -> list[dict]:
    """Fit the reward model; returns the per-step metrics (also written to ``out_dir``, with the
    classifier in ``out_dir/model``)."""
    torch.set_num_threads(1) if cfg.device == "cpu" else None
    common.seed_everything(cfg.seed)
    task = make_task(cfg.task, seed=cfg.seed)
    start = cfg.model or common.sft_policy(task, cfg.seed, cfg.sft_steps, cfg.arch)
    tokenizer = models.load_tokenizer(start)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(start), num_labels=1, local_files_only=True, dtype=torch.float32).to(cfg.device)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rcfg = recipes.default_config("reward_model", grad_accum=cfg.grad_accum)
    pairs = task.preference_pairs(cfg.n_pairs, cfg.seed, bias=cfg.bias)
    heldout = encode_pairs(tokenizer, heldout_pairs(task, cfg.n_eval_pairs, cfg.seed + 1,
                                                    cfg.bias), cfg.device)
    strict = heldout if cfg.bias is None else encode_pairs(
        tokenizer, heldout_pairs(task, cfg.n_eval_pairs, cfg.seed + 1), cfg.device)
    pair_rng = torch.Generator().manual_seed(cfg.seed)
    run = common.Run(out_dir, cfg, cfg.steps, progress)
    t0 = time.time()

    for step in range(cfg.steps + 1):
        row = {"step": step}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            h = _margins(model, heldout, rcfg)
            # eval_accuracy, the figure every loop logs, is the held-out pair accuracy here
            row["eval_accuracy"] = (h > 0).float().mean().item()
            row.update(eval_pair_accuracy=row["eval_accuracy"],
                       eval_margin=h.mean().item(),
                       strict_pair_accuracy=(_margins(model, strict, rcfg) > 0).float().mean().item())
        if step == cfg.steps:                 # the last row only evaluates
            run.log(row | {"time_s": time.time() - t0})
            break
        idx = torch.randint(len(pairs), (cfg.pairs_per_step,), generator=pair_rng).tolist()
        batch = encode_pairs(tokenizer, [pairs[i] for i in idx], cfg.device)

        model.train()
        out = recipes.reward_model(model, None, batch, rcfg)
        optimizer.zero_grad()
        for loss in out.micro:                # gradient accumulation over micro-batches
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        model.eval()

        h = out.stats["margin"]
        row.update(loss=out.loss.item(), margin=h.mean().item(),
                   pair_accuracy=(h > 0).float().mean().item(), grad_norm=float(grad_norm))
        run.log(row | {"time_s": time.time() - t0})
    bias = "" if cfg.bias is None else f", bias {cfg.bias}"
    return run.finish(model, tokenizer, f"reward model on {cfg.task}{bias}, seed {cfg.seed}")
