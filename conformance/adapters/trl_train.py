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
"""

from __future__ import annotations

import copy
import functools
import os
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
        if loss_type == "bnpo":
            out[f"{alg}/grad-accum"] = _BNPO
    return out


RLOO_DEVIATIONS = {
    "rloo/step-matches-recipe-llama": _RLOO_SEQ,
    "rloo/step-matches-recipe-gpt2": _join(_POSITIONS, _RLOO_SEQ),
    "rloo/temperature": _join(_POSITIONS, _RLOO_SEQ),
    "rloo/kl-in-reward": _join(_POSITIONS, _RLOO_SEQ),
    "rloo/nan-old-logp-ignored": _NAN_RLOO,
}
IPO_DEVIATIONS = {"ipo/step-matches-recipe-*": _IPO}


def qualified(algorithms) -> dict:
    return {f"{alg}/padding-invariant": _PADDING_QUALIFIED for alg in algorithms}
