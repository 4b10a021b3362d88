"""What every training loop shares: encoding, sampling, evaluation, the SFT warm-up, the red
flags, and the run's record (metrics.jsonl, curves, the final model).

The algorithm itself is not here: each loop (``grpo.py``, ``ppo.py``, ...) shows its own step,
and takes its loss from ``refimpl.recipes``.

Red flags (computed on every step, thresholds stated here and written with the run)
| flag              | figure                                             | fires when                      |
|-------------------|----------------------------------------------------|---------------------------------|
| KL explosion      | ``kl``: mean over samples of sum_t k(logp, ref),   | kl > ``KL_EXPLOSION`` (nats)    |
|                   | the loop's estimator k (GRPO k3; RLOO, REINFORCE++ |                                 |
|                   | and PPO k1)                                        |                                 |
| mode collapse     | ``entropy`` (mean token entropy, nats) and         | entropy < ``COLLAPSE_ENTROPY``  |
|                   | ``distinct``: (distinct completions - 1) / (G - 1) | or distinct < ``COLLAPSE_DISTINCT`` |
|                   | per group, 0 when all G are the same, 1 when all differ |                          |
| degenerate groups | ``degenerate``: share of groups with equal rewards | degenerate > ``DEGENERATE``     |
| reward hacking    | ``proxy_reward`` vs ``true_reward`` (ppo_rm)       | proxy up by ``HACK_PROXY_RISE`` while true falls by ``HACK_TRUE_FALL`` |
| credit assignment | ``credit_share``: share of |A| on the deciding token | reported (task ``decisive``)    |
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import typing
from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import Tensor

from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

from refimpl import models
from refimpl.recipes import completion_logits, completion_logprobs
from refimpl.tasks import Task

__all__ = ["KL_EXPLOSION", "COLLAPSE_ENTROPY", "COLLAPSE_DISTINCT", "DEGENERATE",
           "HACK_PROXY_RISE", "HACK_TRUE_FALL", "reward_hacking", "seed_everything", "encode_prompts",
           "encode_completions", "sample", "greedy_accuracy", "sft_policy", "red_flags",
           "credit_share", "process_advantages", "Run", "apply_overrides"]

KL_EXPLOSION = 5.0         # nats per sequence (healthy default runs stay below ~3.2; measured)
COLLAPSE_ENTROPY = 0.05    # nats per token: sampling at temperature 1 is nearly greedy
COLLAPSE_DISTINCT = 0.15   # (distinct - 1) / (G - 1): at most 2 distinct completions of 8
DEGENERATE = 0.8           # four groups in five carry no learning signal
HACK_PROXY_RISE = 0.5      # the proxy reward (reward-model units) rises by at least this ...
HACK_TRUE_FALL = 0.1       # ... while the rule-based reward falls by at least this


hf_logging.disable_progress_bar()          # the loops show their own
hf_logging.set_verbosity_error()           # a value head "newly initialized" is the intent


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def encode_prompts(tokenizer, prompts: list[str], device="cpu") -> tuple[Tensor, Tensor]:
    """``<bos> prompt``, left-padded: ``(ids, mask)``, each ``(B, P)``."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def encode_completions(tokenizer, completions: list[str], device="cpu") -> tuple[Tensor, Tensor]:
    """``completion <eos>``, right-padded, without ``<bos>``: ``(ids, mask)``, each ``(B, T)``."""
    rows = [[tokenizer.convert_tokens_to_ids(c) for c in text] + [tokenizer.eos_token_id]
            for text in completions]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids.to(device), mask.to(device)


def _decode(tokenizer, ids: Tensor, mask: Tensor) -> list[str]:
    """The completions as the reward sees them: every real token but the final ``<eos>``; a
    sampled ``<pad>`` or ``<bos>`` stays in the text (as ``<pad>``), so it makes the completion
    wrong instead of vanishing from what is scored."""
    eos = tokenizer.eos_token_id
    out = []
    for row, m in zip(ids.tolist(), mask.tolist()):
        row = [t for t, keep in zip(row, m) if keep]
        if row and row[-1] == eos:
            row = row[:-1]
        out.append(tokenizer.decode(row, skip_special_tokens=False))
    return out


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
           greedy: bool = False) -> dict:
    """Complete ``prompts``: ``prompt_ids/prompt_mask`` (left-padded), ``completion_ids/
    completion_mask`` (right-padded; the mask covers the tokens up to and including the first
    ``<eos>``), and the decoded ``completions``. Sampling is ancestral at ``temperature`` with
    no top-k/top-p, so the policy's log-probabilities at that temperature are the sampling
    probabilities."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)
    kwargs = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature,
                                                       top_k=0, top_p=1.0)
    # an explicit generation config: nothing a checkpoint's own (repetition penalty, min length,
    # ...) may change the distribution the log-probabilities score
    config = GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, **kwargs)
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                         generation_config=config)
    completion_ids = out[:, prompt_ids.shape[1]:]
    is_eos = completion_ids == tokenizer.eos_token_id
    before_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0    # up to the first eos
    completion_mask = before_eos.long()
    completion_ids = completion_ids.masked_fill(~before_eos, tokenizer.pad_token_id)
    if completion_ids.shape[1] == 0:
        raise RuntimeError("generation returned no token")
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                completion_mask=completion_mask,
                completions=_decode(tokenizer, completion_ids, completion_mask))


def greedy_accuracy(model, tokenizer, task: Task, prompts: list[str] | None = None,
                    batch_size: int = 256) -> float:
    """Strict accuracy of greedy decoding on held-out prompts (the task's ``eval_prompts``)."""
    prompts = task.eval_prompts if prompts is None else prompts
    right = 0.0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        out = sample(model, tokenizer, chunk, task.max_new_tokens, greedy=True)
        right += sum(task.strict_reward(p, c) for p, c in zip(chunk, out["completions"]))
    return right / len(prompts)


# ---------------------------------------------------------------------------------------------
# The SFT warm-up: the reference policy every RL run starts from
# ---------------------------------------------------------------------------------------------

#: SFT steps per task that leave a middling policy, room for RL to show a rise. Measured (seed 0,
#: 200 held-out prompts): reverse 100 steps: greedy 0.425 on the code of 2026-12-02 (0.515 on that
#: of 2026-12-01: the warm-up is sensitive to rounding), sampled at temperature 1 about 0.05 (the
#: committed GRPO run's first batch); sort 100: 0.635 / 0.24 (150: 0.89 / 0.535), not re-measured.
SFT_STEPS = {"reverse": 100, "sort": 100, "decisive": 60, "addition": 925}


#: Part of the cache key: bump it when the warm-up's code changes, so no stale model is reused.
SFT_VERSION = 1


def _cache_dir() -> Path:
    root = os.environ.get("RLCONFORM_CACHE") or Path.home() / ".cache" / "rlconform"
    return Path(root) / "sft"


def sft_policy(task: Task, seed: int = 0, steps: int | None = None, arch: str = "llama",
               batch_size: int = 64, lr: float = 1e-3, log=None) -> Path:
    """Train a tiny causal LM from random weights on (prompt, target) pairs of ``task`` for
    ``steps`` AdamW steps (cross-entropy on the completion tokens and ``<eos>``), save it with its
    tokenizer, and return the path. Cached on disk per (task, seed, steps, arch), written
    atomically (a temporary directory renamed into place), so parallel tests share one copy."""
    steps = SFT_STEPS.get(task.name, 300) if steps is None else steps
    prompts = hashlib.sha1("\n".join(task.train_prompts).encode()).hexdigest()[:10]
    key = (f"{task.name}-{prompts}-seed{seed}-steps{steps}-{arch}-bs{batch_size}-lr{lr:g}"
           f"-v{SFT_VERSION}")
    path = _cache_dir() / key
    if (path / "config.json").exists():
        return path
    tokenizer = models.build_tokenizer()
    gen = torch.Generator().manual_seed(seed)
    model = models.causal_lm(tokenizer, arch, seed=seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    prompts = task.train_prompts
    for _ in range(steps):
        idx = torch.randint(len(prompts), (batch_size,), generator=gen).tolist()
        chosen = [prompts[i] for i in idx]
        p_ids, p_mask = encode_prompts(tokenizer, chosen)
        c_ids, c_mask = encode_completions(tokenizer, [task.targets[p] for p in chosen])
        logp = completion_logprobs(model, p_ids, p_mask, c_ids, c_mask)
        loss = -(logp * c_mask).sum() / c_mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
    try:
        models.save(model, tokenizer, tmp)
        os.rename(tmp, path)                 # atomic; loses the race harmlessly
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------------------------
# Red flags
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def token_entropy(model, rollout: dict, temperature: float) -> float:
    """Mean entropy (nats) of the policy's next-token distribution over real completion tokens."""
    logits = completion_logits(model, rollout["prompt_ids"], rollout["prompt_mask"],
                               rollout["completion_ids"], rollout["completion_mask"], temperature)
    logp = torch.log_softmax(logits, dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    m = rollout["completion_mask"].bool()
    return float(ent[m].mean())


def red_flags(rewards: Tensor, group_ids: Tensor, completions: list[str], kl: Tensor,
              entropy: float) -> dict:
    """The per-step red-flag figures of an online loop (see the module docstring)."""
    degenerate, distinct = [], []
    for g in torch.unique(group_ids):
        members = (group_ids == g).nonzero().flatten().tolist()
        if len(members) < 2:                  # a group of one has no spread to measure
            continue
        r = rewards[members]
        degenerate.append(float(bool((r == r[0]).all())))
        distinct.append((len({completions[i] for i in members}) - 1) / (len(members) - 1))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    out = dict(kl=float(kl.mean()), entropy=entropy, distinct=mean(distinct),
               degenerate=mean(degenerate))
    out["flag_kl_explosion"] = out["kl"] > KL_EXPLOSION
    out["flag_mode_collapse"] = entropy < COLLAPSE_ENTROPY or out["distinct"] < COLLAPSE_DISTINCT
    out["flag_degenerate_groups"] = out["degenerate"] > DEGENERATE
    return out


def reward_hacking(rows: list[dict], window: int = 10) -> bool:
    """Reward hacking, on the rows so far: over the last ``window`` steps against the first
    ``window``, the proxy reward rose by ``HACK_PROXY_RISE`` while the rule-based reward fell by
    ``HACK_TRUE_FALL``."""
    rows = [r for r in rows if "proxy_reward" in r]
    if len(rows) < 2 * window:
        return False
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    first, last = rows[:window], rows[-window:]
    return (mean(last, "proxy_reward") - mean(first, "proxy_reward") >= HACK_PROXY_RISE and
            mean(first, "true_reward") - mean(last, "true_reward") >= HACK_TRUE_FALL)


def process_advantages(task, prompts: list[str], completions: list[str], group_ids: Tensor,
                       shape: torch.Size) -> Tensor:
    """Advantages from the task's per-token process reward: ``A_t = r_t - mean_g(r_t)``, the
    reward of token t against the mean reward at position t over the completion's group (no
    propagation to earlier tokens). A sketch of what a process reward model gives a token-level
    method; used only to measure credit assignment."""
    r = torch.zeros(shape)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        values = task.process_reward(p, c)[:shape[1]]
        r[i, :len(values)] = torch.tensor(values)
    A = torch.zeros_like(r)
    for g in torch.unique(group_ids):
        rows = group_ids == g
        A[rows] = r[rows] - r[rows].mean(dim=0, keepdim=True)
    return A


def credit_share(advantages: Tensor, mask: Tensor, position: int) -> float:
    """Share of the advantage mass sum |A_t| that sits on completion position ``position``,
    averaged over samples whose completion reaches it (1/T for a sequence-level advantage)."""
    m = mask.bool()
    a = torch.where(m, advantages.abs(), torch.zeros_like(advantages))
    total = a.sum(dim=1)
    keep = (m.sum(dim=1) > position) & (total > 0)
    if not keep.any():
        return float("nan")
    return float((a[keep, position] / total[keep]).mean())


# ---------------------------------------------------------------------------------------------
# The run's record
# ---------------------------------------------------------------------------------------------

def apply_overrides(config, overrides: dict[str, str]):
    """Set dataclass fields from ``FIELD=VALUE`` strings, parsed by the field's annotation
    (``int``, ``float``, ``bool``, ``str``, any of them ``| None``); ValueError naming the field."""
    hints = typing.get_type_hints(type(config))
    settable = {f.name for f in fields(config)} - {"algorithm", "extra"}
    for key, text in overrides.items():
        if key not in settable:
            raise ValueError(f"--set {key}: not a field of {type(config).__name__} that can be "
                             f"set (fields: {', '.join(sorted(settable))})")
        args = typing.get_args(hints[key]) or (hints[key],)
        optional = type(None) in args
        base = next(a for a in args if a is not type(None))
        if text.lower() in ("none", "null"):
            if not optional:
                raise ValueError(f"--set {key}: may not be None")
            setattr(config, key, None)
            continue
        try:
            if base is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            elif base in (int, float):
                value = base(text)
                if not math.isfinite(value):
                    raise ValueError(text)
            else:
                value = text
        except ValueError:
            raise ValueError(f"--set {key}={text}: expected {base.__name__}"
                             f"{' or none' if optional else ''}") from None
        setattr(config, key, value)
    return config


def _portable(fields_: dict, out: Path) -> dict:
    """The config as written with the run: a path inside the run's parent directory (a reward
    model trained beside the run) is written relative to the run, so the record holds no
    machine's absolute path."""
    parent = str(out.resolve().parent)
    return {k: os.path.relpath(v, out.resolve()) if isinstance(v, str) and
            v.startswith(parent + os.sep) else v for k, v in fields_.items()}


class Run:
    """Writes ``metrics.jsonl`` (one JSON object per step, flushed), ``config.json``, the curves
    (``curves.png``) and the final model; shows a progress bar on a terminal."""

    def __init__(self, out_dir, config, total_steps: int, progress: bool | None = None):
        self.out = Path(out_dir) if out_dir is not None else None
        self.rows: list[dict] = []
        self._file = None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(
                json.dumps(_portable(asdict(config), self.out), indent=2, default=str) + "\n")
            self._file = open(self.out / "metrics.jsonl", "w")
        show = sys.stderr.isatty() if progress is None else progress
        self._bar = None
        if show:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, desc=type(config).__name__, leave=False)
        self._tb = None
        if getattr(config, "tensorboard", False) and self.out is not None:
            from torch.utils.tensorboard import SummaryWriter   # needs the tensorboard package
            self._tb = SummaryWriter(str(self.out / "tensorboard"))

    def log(self, row: dict) -> None:
        row = {k: (float(v) if isinstance(v, Tensor) else v) for k, v in row.items()}
        for k, v in row.items():
            if isinstance(v, float) and math.isnan(v):
                row[k] = None                                  # JSON has no NaN
        self.rows.append(row)
        if self._file:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._tb:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(k, v, row["step"])
        if self._bar:
            self._bar.update(1)
            shown = {k: f"{row[k]:.3g}" for k in ("loss", "reward", "kl", "eval_accuracy")
                     if isinstance(row.get(k), float)}
            self._bar.set_postfix(shown)

    def finish(self, model=None, tokenizer=None, title: str = "") -> list[dict]:
        if self._bar:
            self._bar.close()
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
        if self.out is not None:
            plot_curves(self.rows, self.out / "curves.png", title)
            if model is not None:
                models.save(model, tokenizer, self.out / "model")
        return self.rows


_PANELS = (("reward", "true_reward", "eval_accuracy", "pair_accuracy", "eval_pair_accuracy",
            "strict_pair_accuracy"),
           ("proxy_reward", "margin", "eval_margin"), ("kl",), ("entropy", "distinct", "degenerate"),
           ("loss",))
_FLAGS = {"flag_kl_explosion": ("kl", "KL explosion"),
          "flag_mode_collapse": ("entropy", "mode collapse"),
          "flag_degenerate_groups": ("degenerate", "degenerate groups"),
          "flag_reward_hacking": ("reward", "reward hacking")}


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """One panel per family of figures; a step where a red flag fires is marked on its panel."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [[k for k in keys if any(isinstance(r.get(k), (int, float)) and not
                                      isinstance(r.get(k), bool) for r in rows)]
              for keys in _PANELS]
    panels = [p for p in panels if p]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True,
                             squeeze=False)
    for ax, keys in zip(axes[:, 0], panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            ax.plot(*zip(*pts), label=k, marker="o" if k.startswith("eval_") or k == "strict_pair_accuracy" else None,
                    markersize=3)
        for flag, (key, label) in _FLAGS.items():
            hits = [r["step"] for r in rows if r.get(flag)]
            if hits and any(k == key or (key == "reward" and k == "true_reward") for k in keys):
                ax.axvspan(hits[0], hits[-1], color="red", alpha=0.12)
                ax.text(hits[0], ax.get_ylim()[1], f" {label}", color="red", va="top",
                        fontsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
