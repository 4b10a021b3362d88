"""The fixtures of the training checks (docs/contract.md, "Training steps"): tiny models and
batches built in code, and the two ways of running one step (the adapter's, refimpl's recipe).

Models, one set per architecture (``llama``: rotary positions; ``gpt2``: absolute positions,
the one that exposes wrong position ids), built from refimpl's character tokenizer with seeded
weights and saved with ``save_pretrained`` to a temporary folder, once per process:

- ``policy`` and ``reference``: causal LMs with different weights (seeds 1 and 2), so KL terms
  and their gradients are not zero;
- ``value``: a token classifier with one output (``ppo``'s critic);
- ``reward``: a sequence classifier with one output (``reward_model``'s model).

Every check gets fresh copies (``Fixture.models``): an adapter may put them in train mode or
leave gradients on them without reaching the next check.

Batches (``online_batch``, ``preference_batch``), made so that each behaviour can show:

- prompts of different lengths, left-padded; completions of different lengths, right-padded;
- three groups of four samples with interleaved ids ``[0, 1, 2, 0, 1, 2, ...]`` and distinct
  scores in every group;
- ``old_logp`` = the policy's log-probs at the step's temperature plus uniform noise in
  [-0.4, 0.4] on real tokens, so ratios fall outside [0.8, 1.2] on both sides and are clipped;
- completion lengths chosen so that the micro-batches of ``grad_accum`` 2 and 4 hold unequal
  numbers of real tokens (26/28; 16/10/18/10), every group split across them;
- padded entries of ``old_logp`` and ``old_values`` hold finite garbage in [-3, -1], and a few
  real tokens carry the pad id (also the last real token of some rows): the masks, not the ids
  or the values, say what is real;
- preference pairs of unequal chosen and rejected lengths.
"""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from refimpl.recipes import (
    completion_logprobs,
    completion_values,
    default_config,
    trained_parameters,
)

#: refimpl.models.ARCHS, not imported from there: refimpl.models loads transformers (seconds), which
#: only the training checks need, when they build their fixtures (tests/test_training_checks.py
#: checks that the two agree)
ARCHS = ("llama", "gpt2")
#: smaller than the training loops' models: a check runs a dozen steps
SIZES = dict(hidden=32, layers=2, heads=4, max_positions=64)
B, GROUPS = 12, 3
PROMPT_LENGTHS = (3, 6, 4, 2, 5, 6, 3, 4, 2, 5, 6, 3)          # real tokens, bos included
COMPLETION_LENGTHS = (8, 3, 5, 1, 7, 2, 6, 4, 8, 2, 5, 3)       # micro-batch sums 26/28, 16/10/18/10
PAIRS = 8
CHOSEN_LENGTHS = (5, 2, 7, 3, 6, 1, 4, 7)
REJECTED_LENGTHS = (2, 6, 3, 7, 1, 5, 7, 4)
NOISE = 0.4                                   # |old_logp - logp| on real tokens
#: what padded entries of old_logp / old_values hold: finite garbage, as a rollout buffer may
#: leave there (never 0, which would hide a read of padding)
PAD_GARBAGE = (-3.0, -1.0)
#: real tokens that carry the pad id (pad == eos in many tokenizers): the masks, not the ids,
#: say which positions are real. (row, position) of completions; the last real token of row 3
PAD_ID_TOKENS = ((0, 2), (3, 0), (6, 5))
PAD_ID_PAIRS = ((1, "chosen", 1), (2, "rejected", 2), (4, "chosen", 0))


@dataclass(frozen=True)
class Fixture:
    """The saved models of one architecture; ``models()`` gives fresh in-memory copies."""
    arch: str
    root: Path
    tokenizer: object
    _modules: tuple

    @property
    def policy_path(self) -> str:
        return str(self.root / "policy")

    @property
    def reference_path(self) -> str:
        return str(self.root / "reference")

    @property
    def value_path(self) -> str:
        return str(self.root / "value")

    @property
    def reward_path(self) -> str:
        return str(self.root / "reward")

    def models(self) -> dict:
        """Fresh copies: ``policy``, ``reference``, ``value``, ``reward`` (float32, eval mode,
        dropout 0, no gradients held)."""
        return {k: copy.deepcopy(m) for k, m in zip(("policy", "reference", "value", "reward"),
                                                    self._modules)}


_ROOT: list[Path] = []


@functools.lru_cache(maxsize=None)
def fixture(arch: str) -> Fixture:
    """The models of ``arch``, built and saved once per process."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="rlconform-training-")))
        atexit.register(shutil.rmtree, _ROOT[0], ignore_errors=True)
    root = _ROOT[0] / arch
    from refimpl import models as rm             # transformers, loaded on first use

    tok = rm.build_tokenizer()
    policy = rm.causal_lm(tok, arch, seed=1, **SIZES)
    reference = rm.causal_lm(tok, arch, seed=2, **SIZES)
    value = rm.value_model(tok, arch, seed=3, **SIZES)
    reward = rm.reward_model(tok, arch, seed=4, **SIZES)
    from transformers.utils import logging as hf_logging
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()               # save_pretrained's "Writing model shards"
    try:
        for name, model in (("policy", policy), ("reference", reference), ("value", value),
                            ("reward", reward)):
            rm.save(model, tok, root / name)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return Fixture(arch, root, tok, (policy, reference, value, reward))


# --- batches ------------------------------------------------------------------------------------

def _tokens(gen: torch.Generator, n: int, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (n,), generator=gen)


def _left(rows: list[torch.Tensor], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return ids, mask


def _right(rows: list[torch.Tensor], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def _prompts(fx: Fixture, gen: torch.Generator, lengths) -> list[torch.Tensor]:
    vocab, bos = len(fx.tokenizer), fx.tokenizer.bos_token_id
    return [torch.cat([torch.tensor([bos]), _tokens(gen, n - 1, vocab)]) for n in lengths]


def online_batch(fx: Fixture, algorithm: str = "grpo", temperature: float = 1.0,
                 seed: int = 0) -> dict:
    """A batch of the online algorithms (contract, "Batch"); ``old_logp`` (and ``old_values``
    for ``ppo``) from the fixture's policy (critic) at ``temperature``, perturbed."""
    gen = torch.Generator().manual_seed(seed)
    vocab, pad = len(fx.tokenizer), fx.tokenizer.pad_token_id
    prompt_ids, prompt_mask = _left(_prompts(fx, gen, PROMPT_LENGTHS), max(PROMPT_LENGTHS), pad)
    completion_ids, completion_mask = _right([_tokens(gen, n, vocab) for n in COMPLETION_LENGTHS],
                                             max(COMPLETION_LENGTHS), pad)
    for row, pos in PAD_ID_TOKENS:
        completion_ids[row, pos] = pad
    group_ids = torch.arange(B) % GROUPS
    scores = torch.randn(B, generator=gen).float()
    mask = completion_mask.bool()
    models = fx.models()
    with torch.no_grad():
        logp = completion_logprobs(models["policy"], prompt_ids, prompt_mask, completion_ids,
                                   completion_mask, temperature)
    noise = (2 * torch.rand(logp.shape, generator=gen) - 1) * NOISE
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
             "completion_ids": completion_ids, "completion_mask": completion_mask,
             "scores": scores, "group_ids": group_ids,
             "old_logp": torch.where(mask, logp + noise, _garbage(gen, logp.shape))}
    if algorithm == "ppo":
        with torch.no_grad():
            values = completion_values(models["value"], prompt_ids, prompt_mask, completion_ids,
                                       completion_mask)
        noise = (2 * torch.rand(values.shape, generator=gen) - 1) * 0.3
        batch["old_values"] = torch.where(mask, values + noise, _garbage(gen, values.shape))
    return batch


def _garbage(gen: torch.Generator, shape) -> torch.Tensor:
    lo, hi = PAD_GARBAGE
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


def preference_batch(fx: Fixture, seed: int = 0) -> dict:
    """Preference pairs (contract, "Batch"): prompts left-padded, chosen and rejected
    completions of unequal lengths, right-padded."""
    gen = torch.Generator().manual_seed(seed)
    vocab, pad = len(fx.tokenizer), fx.tokenizer.pad_token_id
    prompt_ids, prompt_mask = _left(_prompts(fx, gen, PROMPT_LENGTHS[:PAIRS]),
                                    max(PROMPT_LENGTHS[:PAIRS]), pad)
    batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}
    for side, lengths in (("chosen", CHOSEN_LENGTHS), ("rejected", REJECTED_LENGTHS)):
        ids, mask = _right([_tokens(gen, n, vocab) for n in lengths], max(lengths), pad)
        for row, which, pos in PAD_ID_PAIRS:
            if which == side:
                ids[row, pos] = pad
        batch[f"{side}_ids"], batch[f"{side}_mask"] = ids, mask
    return batch


def pad_batch(batch: dict, left: int, right: int, pad_id: int) -> dict:
    """``batch`` with ``left`` more padding columns before the prompts and ``right`` more after
    the completions (ids ``pad_id``, masks 0, per-token floats 0)."""
    out = {}
    for k, v in batch.items():
        if k in ("prompt_ids", "prompt_mask"):
            fill = pad_id if k == "prompt_ids" else 0
            out[k] = torch.cat([torch.full((v.shape[0], left), fill, dtype=v.dtype), v], dim=1)
        elif v.dim() == 2:
            fill = pad_id if k.endswith("_ids") else 0
            out[k] = torch.cat([v, torch.full((v.shape[0], right), fill, dtype=v.dtype)], dim=1)
        else:
            out[k] = v
    return out


def config_for(algorithm: str, fx: Fixture, models: dict, **overrides) -> dict:
    """A complete config (``refimpl.recipes.default_config``) with the fixture's paths, and for
    ``ppo`` the critic ``models["value"]``."""
    paths = {"model_path": fx.reward_path if algorithm == "reward_model" else fx.policy_path,
             "ref_model_path": fx.reference_path}
    if algorithm == "ppo":
        paths.update(value_model=models["value"], value_model_path=fx.value_path)
    return default_config(algorithm, **paths, **overrides)


def step_models(algorithm: str, models: dict) -> tuple:
    """``(model, ref_model)`` of a step of ``algorithm``: the reward classifier and no reference
    for ``reward_model``, the policy and its reference otherwise."""
    if algorithm == "reward_model":
        return models["reward"], None
    return models["policy"], models["reference"]


def trainable(algorithm: str, models: dict, config: dict) -> dict:
    """The parameters a step of ``algorithm`` trains, by the names the contract reports them
    under (``refimpl.recipes.trained_parameters``: the value model's as ``value_model.<name>``)."""
    return trained_parameters(step_models(algorithm, models)[0], {**config, "algorithm": algorithm})


__all__ = ["ARCHS", "B", "COMPLETION_LENGTHS", "Fixture", "GROUPS", "config_for", "fixture",
           "online_batch", "pad_batch", "preference_batch", "step_models", "trainable"]
