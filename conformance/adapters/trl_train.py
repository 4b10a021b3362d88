"""``train_step`` for the TRL 1.16.0 adapters: one optimisation step through the trainers' own
code path (docs/contract.md, "Training steps"). Imported lazily by ``conformance/adapters/trl.py``.

What runs is TRL's and transformers' real code, on a real trainer built per call (about 0.1 s):

| algorithm            | trainer        | what runs, per micro-batch                                        |
|----------------------|----------------|-------------------------------------------------------------------|
| grpo, dr_grpo, dapo  | GRPOTrainer    | `GRPOTrainer.training_step` -> `Trainer.training_step` -> `_prepare_inputs` (on the first micro-step `_generate_and_score_completions`: padding, reference log-probs, rewards, group advantages; then the shuffle and split into micro-batches) -> `compute_loss` / `_compute_loss` (log-probs through TRL's fused LM head at `temperature`, clipped objective, k3 KL, `loss_type` normalisation, accumulation scaling) -> `accelerator.backward` |
| rloo                 | RLOOTrainer    | the same path through RLOOTrainer (leave-one-out baseline, sequence-level KL in the reward, sequence-level ratio) |
| dpo, ipo             | DPOTrainer     | `DataCollatorForPreference` on the micro-batch -> `DPOTrainer.training_step` -> `_compute_loss` (policy and reference forward through the fused LM head, `loss_type` "sigmoid" / "ipo") -> `Trainer.training_step`'s 1/grad_accum -> backward |
| reward_model         | RewardTrainer  | the reward collator -> `RewardTrainer.training_step` -> `compute_loss` (Bradley-Terry) -> 1/grad_accum -> backward |

The stubs (declared in ``SHIMS``): generation (``_generate`` returns the batch's own prompt and
completion tokens), the reward function (returns the batch's scores), the rollout log-probs (the
trainer's own no-grad policy forward that makes ``old_per_token_logps`` returns ``batch["old_logp"]``
instead), the outer training loop's bookkeeping (``current_gradient_accumulation_steps``, the
sync flag), and the models: the trainer trains a deep copy of the given policy (TRL patches the
model's ``forward`` with its fused LM head), whose gradients are returned under the given model's
parameter names. No optimizer steps; the weights of the given objects are never touched.

Calling conventions: the samples of an online batch are sorted stably into contiguous groups of
``num_generations`` (RepeatSampler's layout); every sample's tokens go to TRL as lists (its
``_generate`` returns unpadded ids, and TRL pads prompts on the left and completions on the right
itself, to the longest in the batch); ``grad_accum`` k is ``gradient_accumulation_steps=k`` with
``per_device_train_batch_size=B/k``, so that one generation batch is the whole batch.

``train_run`` (docs/contract.md, "Short runs"; GRPO-family variants and trl-rloo) runs the trainer
itself: GRPOTrainer / RLOOTrainer on the checkpoint, ``Trainer.train()`` for ``steps`` sampled
batches with ``task.reward`` as the reward function, nothing replaced (``SHIMS_RUN`` says what it
sets). The settings are refimpl's loop's: 32 prompts x 8 completions per batch, ``num_iterations``
= the loop's epochs (GRPO 2, RLOO 1), one optimizer step over the whole batch per iteration,
learning rate 1e-4 (RLOO 3e-4), constant schedule, gradient norm clipped at 1. One row per sampled
batch (refimpl's "step"), with TRL's logged ``reward`` and ``kl`` (``kl``: TRL's per-token mean,
not refimpl's per-sequence sum); measured on one thread: about 0.85 s per GRPO batch (two
optimizer steps), 127 s for the 150 batches of "reverse".
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
import warnings

import torch

from conformance import Unsupported
from conformance.adapters import support

_at = support.citer("trl")
GT = "trl/trainer/grpo_trainer.py"
RT = "trl/trainer/rloo_trainer.py"
DT = "trl/trainer/dpo_trainer.py"
RWT = "trl/trainer/reward_trainer.py"
UT = "trl/trainer/utils.py"
HT = "transformers/trainer.py"
_OUT = os.path.join(tempfile.gettempdir(), "rlconform-trl-train")   # output_dir; nothing is written
GRPO_FAMILY = ("grpo", "dr_grpo", "dapo")
#: the seed of the generation batch's shuffle in _prepare_inputs (grpo_trainer.py:1541)
SHUFFLE_SEED = 0


def _cite_transformers(line) -> str:
    import transformers
    return f"{HT}:{line}, transformers {transformers.__version__}"


@functools.lru_cache(maxsize=None)
def _lib():
    from types import SimpleNamespace

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RewardConfig, RewardTrainer,
                     RLOOConfig, RLOOTrainer)
    return SimpleNamespace(Dataset=Dataset, AutoTokenizer=AutoTokenizer, GRPOConfig=GRPOConfig,
                           GRPOTrainer=GRPOTrainer, RLOOConfig=RLOOConfig, RLOOTrainer=RLOOTrainer,
                           DPOConfig=DPOConfig, DPOTrainer=DPOTrainer, RewardConfig=RewardConfig,
                           RewardTrainer=RewardTrainer)


def _tokenizer(path):
    tok = _lib().AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _args(cls, **kwargs):
    """A real TRL config (its ``__post_init__`` validation runs), CPU, float32, no logging."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(output_dir=_OUT, use_cpu=True, bf16=False, fp16=False, report_to="none",
                   gradient_checkpointing=False, save_strategy="no", logging_strategy="no",
                   disable_tqdm=True, **kwargs)


def _quiet(build):
    import transformers
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build()
    finally:
        transformers.logging.set_verbosity(level)


def _micro(k, B):
    if not isinstance(k, int) or k < 1 or B % k:
        raise Unsupported(f"grad_accum={k!r} must divide the batch of {B}: TRL's per-device batch is "
                          "B / gradient_accumulation_steps")
    return B // k


def _run_steps(tr, k, micro_inputs):
    """The inner loop of ``Trainer._inner_training_loop`` for one optimizer step, without the
    optimizer: ``current_gradient_accumulation_steps`` (transformers/trainer.py:1885), the sync flag
    (:1893), ``training_step`` per micro-batch (:1914). Returns (loss, grads by name)."""
    model = tr.model
    for p in model.parameters():
        p.grad = None
    tr.current_gradient_accumulation_steps = k
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SHUFFLE_SEED)
        for i in range(k):
            tr.accelerator.gradient_state._set_sync_gradients(i == k - 1)
            inputs = micro_inputs(i)
            num_items = tr._get_num_items_in_batch([inputs], tr.accelerator.device)
            total += float(tr.training_step(model, inputs, num_items))
    grads = {}
    for name, p in model.named_parameters():
        grads[name] = None if p.grad is None else p.grad.detach().clone()
        p.grad = None
    return {"loss": total, "grads": grads}


def _policy_copy(model, name_or_path=None):
    """The trainer's policy: a deep copy of the given one (TRL patches ``forward``); its
    ``config._name_or_path`` is where TRL's GRPO/RLOO reload their reference from."""
    policy = copy.deepcopy(model)
    for p in policy.parameters():
        p.grad = None
    if name_or_path is not None:
        policy.config._name_or_path = str(name_or_path)
    return policy


def _same_weights(tr_ref, ref_model):
    """The reference TRL loaded from ``ref_model_path`` holds the given reference's weights."""
    if ref_model is None or tr_ref is None:
        return
    given = ref_model.state_dict()
    for name, tensor in tr_ref.state_dict().items():
        if name in given and not torch.equal(given[name].to(tensor.device, tensor.dtype), tensor):
            raise ValueError(f"the reference TRL loaded from config['ref_model_path'] differs from the "
                             f"given ref_model at {name}")


# --- online: GRPO, RLOO ---------------------------------------------------------------------------

def _online(kind, loss_type, model, ref_model, batch, config):
    t = _lib()
    B, T = batch["completion_ids"].shape
    k = config["grad_accum"]
    per_device = _micro(k, B)
    order, G = support.contiguous_groups(
        batch["group_ids"], "TRL's RepeatSampler gives every prompt num_generations samples and the "
        f"advantage code reshapes to (-1, G) ({_at(GT + ':1311, :2765')})", batch["scores"])
    rows = order.tolist()
    beta = float(config["beta"])
    common = dict(per_device_train_batch_size=per_device, gradient_accumulation_steps=k,
                  num_generations=G, beta=beta, epsilon=config["clip_low"],
                  epsilon_high=config["clip_high"], temperature=config["temperature"],
                  max_completion_length=config["norm_len"] or T, seed=SHUFFLE_SEED)
    if kind == "grpo":
        # num_iterations=2: the slot where TRL computes old_per_token_logps (grpo_trainer.py:2640-2653)
        args = _args(t.GRPOConfig, loss_type=loss_type, scale_rewards=config["scale"],
                     delta=config["dual_clip"], num_iterations=2, **common)
        cls = t.GRPOTrainer
    else:
        args = _args(t.RLOOConfig, **common)
        cls = t.RLOOTrainer
    scores = batch["scores"]

    def scores_reward(prompts, completions, completion_ids, row, **kwargs):
        return [float(scores[r]) for r in row]

    ds = t.Dataset.from_dict({"prompt": ["p"] * B, "row": list(range(B))})
    policy = _policy_copy(model, config.get("ref_model_path") if beta else None)
    tok = _tokenizer(config["model_path"])
    tr = _quiet(lambda: cls(model=policy, reward_funcs=scores_reward, args=args, train_dataset=ds,
                            processing_class=tok))
    _same_weights(tr.ref_model, ref_model)

    pm, cm = batch["prompt_mask"].bool(), batch["completion_mask"].bool()
    prompt_lists = [batch["prompt_ids"][r][pm[r]].tolist() for r in rows]
    completion_lists = [batch["completion_ids"][r][cm[r]].tolist() for r in rows]

    def generate(prompts):                  # generation, replaced: the batch's own tokens
        n = len(prompts)
        if kind == "grpo":
            return prompt_lists, completion_lists, None, ["c"] * n, None, {}, None, None
        return prompt_lists, completion_lists, ["c"] * n
    tr._generate = generate

    real_logps = tr._get_per_token_logps_and_entropies
    old = batch["old_logp"][order]

    def logps(m, input_ids, *a, **kw):
        # the rollout policy's log-probs, where TRL recomputes them with a no-grad policy forward
        # (grpo_trainer.py:2640-2653; rloo_trainer.py:1600-1609); everything else is TRL's forward
        if m is tr.model and not torch.is_grad_enabled():
            width = a[1] if len(a) > 1 else kw["logits_to_keep"]        # TRL's completion width
            return old[:, :width].to(input_ids.device), None, None
        return real_logps(m, input_ids, *a, **kw)
    tr._get_per_token_logps_and_entropies = logps

    generation_batch = [{"prompt": "p", "row": r} for r in rows]
    return _run_steps(tr, k, lambda i: generation_batch)


def _check_online(adapter, alg, config):
    kl_in = config["kl_in"]
    allowed = support.honoured(adapter, "kl_in", alg)
    if kl_in not in allowed:
        raise Unsupported(f"{adapter.name}: {alg} with kl_in={kl_in!r}; the trainer puts the KL in the "
                          f"{' and '.join(allowed)}")
    if float(config["beta"]) != 0.0:
        support.honour(adapter, "kl_kind", config["kl_kind"], alg)
    support.honour(adapter, "agg", config["agg"], alg)
    support.honour(adapter, "scale", config.get("scale", "group"), alg)
    if support.honoured(adapter, "clip_high", alg) is False and config["clip_high"] not in (None, config["clip_low"]):
        raise Unsupported(f"{adapter.name}: {alg} has one clip epsilon")
    if support.honoured(adapter, "dual_clip", alg) is False and config["dual_clip"] is not None:
        raise Unsupported(f"{adapter.name}: {alg} has no dual clip")
    if support.honoured(adapter, "norm_len", alg) is False and config["norm_len"] is not None:
        raise Unsupported(f"{adapter.name}: {alg} takes no norm_len")


# --- preference: DPO, IPO, reward model -----------------------------------------------------------

def _pair_lists(batch):
    pm = batch["prompt_mask"].bool()
    out = []
    for i in range(batch["prompt_ids"].shape[0]):
        row = {"prompt_ids": batch["prompt_ids"][i][pm[i]].tolist()}
        for side in ("chosen", "rejected"):
            m = batch[f"{side}_mask"][i].bool()
            row[f"{side}_ids"] = batch[f"{side}_ids"][i][m].tolist()
        out.append(row)
    return out


def _dpo(loss_type, model, ref_model, batch, config):
    t = _lib()
    pairs = _pair_lists(batch)
    n, k = len(pairs), config["grad_accum"]
    per_device = _micro(k, n)
    beta = config["tau"] if loss_type == "ipo" else config["beta"]
    args = _args(t.DPOConfig, loss_type=[loss_type], beta=beta, per_device_train_batch_size=per_device,
                 gradient_accumulation_steps=k, max_length=None)
    # DPOTrainer tokenizes text datasets itself, appending EOS (dpo_trainer.py:1062-1070): the
    # dataset is a placeholder, the batch's token lists go through the trainer's collator
    ds = t.Dataset.from_dict({"prompt": ["1"], "chosen": ["2"], "rejected": ["3"]})
    policy, reference = _policy_copy(model), _policy_copy(ref_model)
    tok = _tokenizer(config["model_path"])
    tr = _quiet(lambda: t.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=ds,
                                     processing_class=tok))
    collate = tr.data_collator
    return _run_steps(tr, k, lambda i: collate(pairs[i * per_device:(i + 1) * per_device]))


def _reward(model, batch, config):
    t = _lib()
    pairs = _pair_lists(batch)
    n, k = len(pairs), config["grad_accum"]
    per_device = _micro(k, n)
    examples = [{"chosen_ids": p["prompt_ids"] + p["chosen_ids"],
                 "rejected_ids": p["prompt_ids"] + p["rejected_ids"]} for p in pairs]
    args = _args(t.RewardConfig, per_device_train_batch_size=per_device, gradient_accumulation_steps=k,
                 max_length=None)
    ds = t.Dataset.from_dict({k_: [e[k_] for e in examples] for k_ in ("chosen_ids", "rejected_ids")})
    policy = _policy_copy(model)
    tok = _tokenizer(config["model_path"])
    tr = _quiet(lambda: t.RewardTrainer(model=policy, args=args, train_dataset=ds, processing_class=tok))
    collate = tr.data_collator
    return _run_steps(tr, k, lambda i: collate(examples[i * per_device:(i + 1) * per_device]))


# --- entry point ----------------------------------------------------------------------------------

def train_step(adapter, model, ref_model, batch, config):
    """One step of ``config["algorithm"]`` through the trainer ``adapter`` embodies; returns
    ``{"loss": float, "grads": {name: tensor}}`` (TRL runs backward itself)."""
    alg = config["algorithm"]
    if alg not in support.honoured(adapter, "algorithms"):
        raise Unsupported(f"{adapter.name} does not implement {alg!r} (its algorithms: "
                          f"{list(support.honoured(adapter, 'algorithms'))})")
    if alg in GRPO_FAMILY:
        _check_online(adapter, alg, config)
        return _online("grpo", adapter._loss_type(), model, ref_model, batch, config)
    if alg == "rloo":
        _check_online(adapter, alg, config)
        return _online("rloo", None, model, ref_model, batch, config)
    if alg == "dpo":
        support.honour(adapter, "label_smoothing", config["label_smoothing"], "dpo_loss", default=0.0)
        return _dpo("sigmoid", model, ref_model, batch, config)
    if alg == "ipo":
        return _dpo("ipo", model, ref_model, batch, config)
    if alg == "reward_model":
        return _reward(model, batch, config)
    raise Unsupported(f"TRL 1.16.0 has no trainer for {alg!r}")


# --- declarations (trl.py merges them into each variant's) -----------------------------------------

def _transformers(line) -> str:
    return f"{HT}:{line}, transformers (the version TRL {support.PINS['trl']} installs)"


#: stubs and translations of train_step, per trainer
SHIMS_ONLINE = {
    "train_step": (
        "real trainer built per call on a deep copy of the given policy (TRL patches the model's "
        f"forward with its fused LM head, {_at(GT + ':1066-1077')}); gradients are read from the copy "
        "under the same parameter names. Generation is replaced: _generate returns each sample's own "
        "prompt and completion tokens as unpadded lists, which TRL pads itself (prompts left, "
        f"completions right, {_at(GT + ':2443-2463')}); the reward function returns the batch's scores. "
        "Samples are sorted stably into contiguous groups of num_generations, as RepeatSampler hands "
        f"them over ({_at(GT + ':1311')}). The rollout log-probs: GRPO runs with num_iterations=2, the "
        "setting under which it computes old_per_token_logps with a no-grad policy forward "
        f"({_at(GT + ':2640-2653')}), and that forward (RLOO's always, {_at(RT + ':1600-1610')}) returns "
        "batch['old_logp'] instead. grad_accum k is gradient_accumulation_steps=k with "
        "per_device_train_batch_size=B/k (one generation batch = the whole batch); the outer training "
        f"loop's bookkeeping is reproduced ({_transformers('1885, :1899, :1917')}), then "
        f"training_step runs k times; TRL shuffles the generation batch before splitting it "
        f"({_at(GT + ':1543')}; {_at(RT + ':1112')}; seeded), so micro-batches are not the contract's "
        "contiguous slices (the sum of their gradients is the same for every loss_type but bnpo). "
        "No optimizer step, no gradient clipping."),
}
SHIMS_PREFERENCE = {
    "train_step": (
        "real DPOTrainer / RewardTrainer built per call on deep copies of the given models (TRL "
        f"patches forward, {_at(DT + ':961-962')}); the dataset is a placeholder and each contiguous "
        "micro-batch's token lists (prompt, chosen, rejected, unpadded) go through the trainer's own "
        f"data collator ({_at(DT + ':146-208')}; {_at(RWT + ':203-230')}) into training_step, k times, "
        f"with the outer loop's bookkeeping ({_transformers('1885, :1899, :1917')}); no optimizer step."),
}

_POSITIONS = ("TRL calls the model with input_ids and attention_mask only, no position_ids "
              f"({_at(GT + ':1450, :1498')}; {_at(RT + ':1019, :1067')}), so the positions count the "
              "left padding of the prompts: on GPT-2's absolute positions every left-padded row is "
              "scored at shifted positions (on Llama's rotary positions only differences of positions "
              "enter, and the step matches)")
_KL_BIAS = ("the KL term is k3 * exp(logp - old_logp) (use_bias_correction_kl=True, the default), "
            "so its gradient is not beta * grad k3 whenever old_logp differs from logp "
            f"({_at(GT + ':3104-3105')}; {_at('trl/trainer/grpo_config.py:972-978')})")
_EPS_STEP = ("divides the advantages by std + 1e-4, a constant in code, where the config's eps is "
             f"1e-6 ({_at(GT + ':2787')})")
_NAN = ("the loss is NaN when old_logp holds NaN at padded positions: TRL's per-token loss is masked "
        "by multiplication, (per_token_loss * mask).sum() "
        f"({_at(GT + ':3083, :3153-3173')}); the gradient is unchanged (the fused LM head gives "
        f"padded positions no gradient path, {_at(UT + ':1660')})")
_NAN_RLOO = ("old_logps = (old_per_token_logps * completion_mask).sum(1): NaN at a padded position "
             f"makes the sequence's rollout log-prob, hence the loss and the gradient, NaN "
             f"({_at(RT + ':1610, :1822-1833')})")
_RLOO_SEQ = ("RLOOTrainer clips the sequence-level ratio exp(sum logp - sum old_logp) and returns "
             "the mean over sequences of -min(r A, clip(r) A) "
             f"({_at(RT + ':1822-1833')}); the recipe clips each token's ratio and sums over tokens, "
             "so the gradient differs when old_logp != logp and the loss value differs always "
             "(one term per sequence, not one per token)")
_BNPO = ("loss_type 'bnpo' takes the token mean of each micro-batch and divides it by "
         f"gradient_accumulation_steps ({_at(GT + ':3158-3162')}): with micro-batches of unequal "
         "numbers of real tokens the accumulated gradient is not the whole batch's")
_IPO = ("DPOTrainer's IPO divides each sequence's log-ratio by its completion's token count "
        f"(chosen_scores / chosen_mask.sum(dim=1), {_at(DT + ':1398-1404')}); the recipe's IPO "
        "(Azar et al., Eq. 17) uses the sequence sums, so on completions of unequal multi-token "
        "lengths the loss and gradient differ")

_PADDING_QUALIFIED = ("TRL receives each sample's tokens as unpadded lists and pads them itself to the "
                      "longest in the batch (_generate returns lists, "
                      f"{_at(GT + ':2443-2463')}; the preference collators pad likewise, "
                      f"{_at(DT + ':180-200')}), so the extra padding never reaches the trainer: how it "
                      "would treat padding beyond the longest sample cannot show")

#: the step-check options of each recipe's defaults that matter here (refimpl.recipes)
_BETA_DEFAULT = {"grpo": True, "dr_grpo": True, "dapo": False}
_SCALED = {"grpo": True, "dr_grpo": False, "dapo": True}


def _join(*parts):
    return "; ".join(p for p in parts if p)


def grpo_deviations(algorithms, loss_type) -> dict:
    """The training checks GRPOTrainer with ``loss_type`` fails, per algorithm it implements."""
    out = {}
    for alg in algorithms:
        kl = _KL_BIAS if _BETA_DEFAULT[alg] else ""
        eps = _EPS_STEP if _SCALED[alg] else ""
        llama = _join(kl, eps)
        if llama:
            out[f"{alg}/step-matches-recipe-llama"] = llama
        out[f"{alg}/step-matches-recipe-gpt2"] = _join(_POSITIONS, kl, eps)
        out[f"{alg}/temperature"] = _join(_POSITIONS, _KL_BIAS, eps)       # beta 0.1, on GPT-2
        out[f"{alg}/kl-term-exact"] = _join(_POSITIONS, _KL_BIAS)          # on GPT-2
        out[f"{alg}/nan-old-logp-ignored"] = _NAN
        if eps:                      # options moved with beta 0 on Llama: only the eps is left
            out[f"{alg}/config-honoured"] = eps
        if loss_type == "bnpo":
            out[f"{alg}/grad-accum"] = _BNPO
    return out


RLOO_DEVIATIONS = {
    "rloo/step-matches-recipe-llama": _RLOO_SEQ,
    "rloo/step-matches-recipe-gpt2": _join(_POSITIONS, _RLOO_SEQ),
    "rloo/temperature": _join(_POSITIONS, _RLOO_SEQ),
    "rloo/kl-in-reward": _join(_POSITIONS, _RLOO_SEQ),
    "rloo/nan-old-logp-ignored": _NAN_RLOO,
    "rloo/config-honoured": _RLOO_SEQ,
}
IPO_DEVIATIONS = {"ipo/step-matches-recipe-*": _IPO, "ipo/config-honoured": _IPO}
_POOLING = ("RewardTrainer reads the reward where transformers' sequence classifier pools: the "
            "rightmost token whose id is not the pad id (input_ids != pad_token_id; "
            "transformers/modeling_layers.py:179-182 for Llama, "
            "transformers/models/gpt2/modeling_gpt2.py:921-925, transformers 5.24.0, used as is by "
            f"{_at(RWT + ':777')}), not at the last real token of the attention mask: a sequence "
            "whose last real token has the pad id (pad == eos, as many tokenizers set it) is "
            "scored at an earlier token")
REWARD_DEVIATIONS_TRAIN = {"reward_model/step-matches-recipe-*": _POOLING}


def qualified(algorithms) -> dict:
    return {f"{alg}/padding-invariant": _PADDING_QUALIFIED for alg in algorithms}


# --- train_run: a short real run through Trainer.train() ---------------------------------------------

#: what train_run runs and what it sets (trl.py merges it into the GRPO-family and RLOO variants)
SHIMS_RUN = {
    "train_run": (
        "nothing of the trainer is replaced: GRPOTrainer / RLOOTrainer built on the checkpoint at "
        "model_path (float32, CPU, one thread) and run by transformers' Trainer.train() "
        f"({_transformers('1450, :1583, :1939-1943')}): RepeatSampler over task.train_prompts, TRL's "
        f"own sampling with transformers generate ({_at(GT + ':1155-1173, :1873')}; "
        f"{_at(RT + ':787, :1385')}), the reward function, advantages, loss, AdamW (weight decay 0, "
        "i.e. Adam), gradient clipping. The reward function is the user's part: task.reward on each "
        "completion decoded as refimpl's loops decode it (the generated ids up to a final <eos>, "
        f"special tokens kept; TRL stores the values in float32, {_at(GT + ':1637')}). Settings are "
        "refimpl's loop's where TRL has them (refimpl/train/grpo.py, refimpl/train/rloo.py): 32 "
        "prompts x num_generations 8 per generation batch, num_iterations = the loop's epochs (GRPO 2, "
        "RLOO 1), one optimizer step over the whole batch per iteration, learning_rate 1e-4 (RLOO "
        "3e-4), lr_scheduler_type constant, max_grad_norm 1.0, max_completion_length = "
        "task.max_new_tokens, top_k 0, top_p 1; steps counts sampled batches as refimpl's loop does "
        "(max_steps = steps x num_iterations) and each returned row is one batch: its reward "
        f"(TRL's logged mean of the reward function, {_at(GT + ':2828')}; {_at(RT + ':1726')}) and the "
        f"mean over its optimizer steps of TRL's logged kl ({_at(GT + ':3268')}: per-token k3 of the "
        f"loss, bias-corrected by the ratio; {_at(RT + ':1716')}: per-token k1 of the rollout). With "
        "beta = 0 TRL loads no reference and logs no kl "
        f"({_at(GT + ':984-986')}; {_at(RT + ':670-672')}): the adapter then measures the rollout "
        "policy's per-token k3 against a frozen copy of the checkpoint on each generation batch, "
        "outside the loss. TRL's per-step printing is removed; nothing is saved (save_strategy no)."),
}

#: the per-step keys of TRL's logs a run row keeps (besides reward and kl)
_RUN_KEYS = ("loss", "grad_norm", "learning_rate", "entropy", "reward_std", "frac_reward_zero_std",
             "completions/mean_length", "clip_ratio/region_mean")


def _loop_settings(alg):
    """refimpl's loop settings for ``alg`` (refimpl/train/grpo.py GRPOConfig, refimpl/train/rloo.py
    RLOOConfig): prompts per step, group size, epochs over each batch, learning rate, clip norm."""
    if alg == "rloo":
        from refimpl.train.rloo import RLOOConfig as Loop
    else:
        from refimpl.train.grpo import GRPOConfig as Loop
    d = Loop()
    return d.prompts_per_step, d.group_size, d.epochs, d.lr, d.max_grad_norm


def _decode_completion(tok, ids):
    """A completion as refimpl's loops score it (refimpl/train/common.py ``_decode``): every
    generated token but a final ``<eos>``, decoded without dropping special tokens (a sampled
    ``<pad>`` or ``<bos>`` stays in the text and makes the completion wrong)."""
    ids = list(ids)
    if ids and ids[-1] == tok.eos_token_id:
        ids = ids[:-1]
    return tok.decode(ids, skip_special_tokens=False)


class _KLProbe:
    """The KL metric where TRL computes none (beta = 0: GRPOTrainer loads no reference and logs no
    ``kl``): on each generation batch, the rollout policy's per-token k3 against a frozen copy of the
    start checkpoint, averaged over real completion tokens (the definition of GRPOTrainer's own
    ``kl`` metric at ratio 1). A measurement only: nothing of it enters the loss."""

    def __init__(self, model_path, temperature):
        from transformers import AutoModelForCausalLM
        self.ref = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
        self.ref.requires_grad_(False)
        self.temperature = float(temperature)

    def _logps(self, model, ids, am, T):
        pos = (am.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
        logits = logits[:, -T - 1:-1].float() / self.temperature
        return torch.log_softmax(logits, -1).gather(-1, ids[:, -T:, None]).squeeze(-1)

    @torch.no_grad()
    def __call__(self, policy, tok, prompts, completion_ids):
        enc = tok(list(prompts), return_tensors="pt", padding=True, padding_side="left")
        T = max(len(c) for c in completion_ids)
        c_ids = torch.full((len(completion_ids), T), tok.pad_token_id, dtype=torch.long)
        c_mask = torch.zeros_like(c_ids)
        for i, c in enumerate(completion_ids):
            c_ids[i, :len(c)] = torch.tensor(list(c), dtype=torch.long)
            c_mask[i, :len(c)] = 1
        ids = torch.cat([enc["input_ids"], c_ids], 1)
        am = torch.cat([enc["attention_mask"], c_mask], 1)
        was = policy.training
        policy.eval()
        try:
            lp = self._logps(policy, ids, am, T)
        finally:
            policy.train(was)
        rp = self._logps(self.ref, ids, am, T)
        k3 = torch.exp(rp - lp) - (rp - lp) - 1
        m = c_mask.bool()
        return float(k3[m].mean())


def _run_rows(logs, per_batch, probe_kl):
    """One row per sampled batch (refimpl's step: one generation, ``per_batch`` optimizer steps on
    it) from TRL's per-optimizer-step logs: the reward of the batch (logged on the step that
    generated it), the KL averaged over its optimizer steps (TRL logs it on each), the other
    figures of the batch's first optimizer step."""
    rows = []
    for i in range(0, len(logs), per_batch):
        block = logs[i:i + per_batch]
        first = block[0]
        row = {"step": len(rows), "trl_global_steps": [b["_global_step"] for b in block],
               "time_s": float(block[-1]["_time_s"])}
        row["reward"] = float(first["reward"])
        kls = [b["kl"] for b in block if b.get("kl") is not None]
        if kls:
            row["kl"] = float(sum(kls) / len(kls))
        else:
            row["kl"] = probe_kl[len(rows)] if len(rows) < len(probe_kl) else float("nan")
            row["kl_source"] = "adapter probe (beta = 0: TRL computes no KL)"
        losses = [b["loss"] for b in block if isinstance(b.get("loss"), (int, float))]
        for k in _RUN_KEYS:
            if k in first and first[k] is not None:
                row[k] = float(first[k])
        if losses:
            row["loss"] = float(sum(losses) / len(losses))
        rows.append(row)
    return rows


def train_run(adapter, model_path, task, config, steps, seed, out_dir=None):
    """``steps`` sampled batches of ``config["algorithm"]`` through the trainer's own
    ``Trainer.train()`` (GRPOTrainer or RLOOTrainer) from the checkpoint at ``model_path``, on
    ``task``'s prompts with ``task.reward`` as the reward function; one metrics row per batch."""
    import time

    import transformers
    from transformers import AutoModelForCausalLM, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    alg = config["algorithm"]
    if alg not in support.honoured(adapter, "algorithms") or alg not in (*GRPO_FAMILY, "rloo"):
        raise Unsupported(f"{adapter.name} has no train_run for {alg!r} (online GRPO-family and RLOO "
                          "trainers only)")
    _check_online(adapter, alg, config)
    if config.get("norm_len") not in (None, task.max_new_tokens):
        raise Unsupported("TRL's Dr. GRPO normaliser is max_completion_length, which is also the "
                          f"generation budget (task.max_new_tokens = {task.max_new_tokens}); "
                          f"norm_len={config['norm_len']!r} cannot be both")
    t = _lib()
    prompts_per_step, G, epochs, lr, max_grad_norm = _loop_settings(alg)
    batch = prompts_per_step * G
    k = config.get("grad_accum", 1)
    per_device = _micro(k, batch)
    beta = float(config["beta"])
    # Trainer's output_dir: a scratch directory, removed afterwards (nothing is saved into it;
    # out_dir is the caller's, for the metrics it writes)
    trl_out = tempfile.mkdtemp(prefix="rlconform-trl-run-")
    common = dict(per_device_train_batch_size=per_device, gradient_accumulation_steps=k,
                  steps_per_generation=k,            # one generation batch = one optimizer step
                  num_generations=G, num_iterations=epochs, beta=beta,
                  epsilon=config["clip_low"], epsilon_high=config["clip_high"],
                  temperature=config["temperature"], max_completion_length=task.max_new_tokens,
                  learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=max_grad_norm,
                  max_steps=steps * epochs, logging_steps=1, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if alg == "rloo":
            args = t.RLOOConfig(output_dir=trl_out, use_cpu=True, bf16=False, fp16=False,
                                report_to="none", gradient_checkpointing=False, save_strategy="no",
                                disable_tqdm=True, **common)
            cls = t.RLOOTrainer
        else:
            args = t.GRPOConfig(output_dir=trl_out, use_cpu=True, bf16=False, fp16=False,
                                report_to="none", gradient_checkpointing=False, save_strategy="no",
                                disable_tqdm=True, loss_type=adapter._loss_type(),
                                scale_rewards=config["scale"], delta=config["dual_clip"], **common)
            cls = t.GRPOTrainer

    tok = _tokenizer(model_path)
    holder = {}
    probe = _KLProbe(model_path, config["temperature"]) if beta == 0.0 else None
    probe_kl = []

    def task_reward(prompts, completions, completion_ids, **kwargs):
        # task.reward on each completion decoded as refimpl's loops decode it
        if probe is not None:
            probe_kl.append(probe(holder["trainer"].model, tok, prompts, completion_ids))
        return [float(task.reward(p, _decode_completion(tok, c)))
                for p, c in zip(prompts, completion_ids)]
    task_reward.__name__ = f"{task.name}_reward"

    logs_seen = []

    class Collect(TrainerCallback):
        """TRL's per-step logs (logging_steps=1): one per optimizer step, without the summary."""
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                logs_seen.append({**logs, "_global_step": state.global_step,
                                  "_time_s": time.time() - t0})

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.time()
    try:
        transformers.set_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
        ds = t.Dataset.from_dict({"prompt": list(task.train_prompts)})
        trainer = _quiet(lambda: cls(model=model, reward_funcs=task_reward, args=args, train_dataset=ds,
                                     processing_class=tok, callbacks=[Collect()]))
        holder["trainer"] = trainer
        for quiet in (PrinterCallback, ProgressCallback):      # no per-step printing
            trainer.remove_callback(quiet)
        _quiet(trainer.train)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(trl_out, ignore_errors=True)
    return _run_rows(logs_seen, epochs, probe_kl)
