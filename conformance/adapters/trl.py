"""Adapters for TRL 1.16.0 (``pip install trl==1.16.0``; transformers, accelerate, datasets).

TRL keeps almost all of its math inline in trainer methods. Each canonical function below calls
the trainer method that computes it, unbound, on an instance made with
``object.__new__(<Trainer>)`` that carries only the attributes the method reads (the stub). The
trainer's ``__init__`` is not run (it needs a model, a dataset and a tokenizer); the stub sets the
attributes ``__init__`` would copy from a real ``GRPOConfig``/``RLOOConfig``/``DPOConfig``/
``RewardConfig``, which is built per call with the options of that call, so TRL's own config
validation runs.

| canonical                     | TRL code path                                                    |
|-------------------------------|------------------------------------------------------------------|
| `group_normalized_advantages` | `GRPOTrainer._generate_and_score_completions` (`scale_rewards`)  |
| `leave_one_out_advantages`    | `RLOOTrainer._generate_and_score_completions`                    |
| `ppo_clip_loss`               | `GRPOTrainer._compute_loss` (`epsilon`, `epsilon_high`, `delta`, `loss_type`) |
| `policy_gradient_loss`        | `GRPOTrainer._compute_loss` on policy (no `old_per_token_logps`) |
| `aggregate`                   | `GRPOTrainer._compute_loss`: the `loss_type` normalisation       |
| `kl_estimate`                 | `GRPOTrainer._compute_loss`: the `beta` KL term (k3 only)        |
| `dpo_loss`, `ipo_loss`        | `DPOTrainer._compute_loss` (`loss_type` "sigmoid", "ipo")        |
| `bradley_terry_loss`          | `RewardTrainer.compute_loss` (with and without `margin`)         |
| `token_logprobs`              | `trl.trainer.utils.selective_log_softmax`                        |

The stubs (what replaces the parts of a trainer that are not arithmetic):
- ``accelerator``: one process; ``gather``/``reduce`` return their input, as accelerate does on a
  single process.
- ``model``: an object with ``training = True`` (train mode) and no gradient checkpointing; for
  ``_compute_loss`` the model forward ``_get_per_token_logps_and_entropies`` is replaced by one
  that yields the given per-token log-probabilities (entropies 0, no MoE aux loss); for DPO and
  the reward model the model's ``__call__`` returns the given log-probabilities / rewards in the
  output fields the method reads (``log_probs``, ``logits``; the metric-only fields as zeros).
- generation (advantage paths): ``_generate`` returns one prompt token and one completion token
  per sample, and the user reward function returns the given scores; TRL's own
  ``_calculate_rewards`` turns them into its float32 reward tensor (grpo_trainer.py:1637).
- metrics and logs: the ``_metrics``/``_logs`` containers ``__init__`` creates.

Calling conventions (translations only, no values changed):
- Samples are sorted (stably) into contiguous groups of equal size, as TRL's ``RepeatSampler``
  hands them over (grpo_trainer.py:1311), and the advantages are put back in the caller's order.
  Groups of unequal size cannot come out of that sampler: ``Unsupported``.
- Masks go in as TRL's ``completion_mask``, an int64 tensor (grpo_trainer.py:2453);
  ``num_items_in_batch`` is the real-token count, as ``_generate_and_score_completions`` computes
  it (grpo_trainer.py:2498). The ``loss_type`` of the variant selects the aggregation;
  ``norm_len`` is ``max_completion_length`` (``dr_grpo``), the padded width when None.
- ``dual_clip`` is TRL's ``delta`` (two-sided clipping, INTELLECT-2): TRL clamps the ratio at
  delta on every token, which is the dual-clip floor -c A whenever c > 1 + clip_high; for
  1 < c <= 1 + clip_high it is not (a declared deviation).
- ``aggregate(values)`` is the GRPO loss at ratio 1 (the on-policy step: ``old_per_token_logps``
  is ``per_token_logps.detach()``, grpo_trainer.py:3066) with advantages ``-values``: TRL's
  per-token loss there is ``-min(1 * A, clip(1) * A) = -A``, i.e. exactly ``values``.
- ``kl_estimate`` is one ``_compute_loss`` call per token (a batch of one 1-token row, advantage 0,
  ``beta = 1``): TRL returns the token's KL term times its mask entry; the per-token values are
  stacked back into (B, T). TRL has only k3 in the loss: k1/k2 are ``Unsupported``.
- DPO, IPO and the reward loss return a batch mean: one call per pair. A reward ``margin`` goes
  in as TRL's collator makes it, a float32 tensor (reward_trainer.py:208).
- Outputs come back uncast, in the dtype TRL produces (its advantage paths compute on float32
  rewards, grpo_trainer.py:1637, and return float32 for float64 scores).

Options TRL has no slot for: the KL ``kind`` (GRPO always uses k3), DPO ``label_smoothing`` (the
"sigmoid" loss has none, ``DPOConfig.label_smoothing`` serves the robust and EXO losses only) and
groups of unequal size, declared in ``capabilities``; and the advantage ``eps``, which TRL
hard-codes as 1e-4: the adapter cannot pass it, so the checks that depend on it are declared
deviations.

Variants: GRPO's ``loss_type`` selects the aggregation. ``trl`` is TRL's defaults (every function,
``GRPOConfig.loss_type`` read at run time, "dapo" in 1.16.0); ``trl-grpo`` (seq-mean-token-mean),
``trl-dr_grpo`` (seq-mean-token-sum-norm), ``trl-dapo`` and ``trl-bnpo`` (token-mean, over the
accumulated and the local batch, the same on one process without accumulation) carry the GRPO
functions; each declares its own aggregation in ``capabilities`` (the harness calls it in that
mode; a direct call in another contract mode is ``Unsupported``, an unknown mode string is handed
to TRL as ``loss_type``, which judges it). ``trl-rloo``,
``trl-dpo`` and ``trl-reward`` carry what RLOOTrainer, DPOTrainer and RewardTrainer compute.
Training: ``train_step`` (every variant) and ``train_run`` (the GRPO-family variants and
``trl-rloo``: a short real ``Trainer.train()`` run) live in ``conformance/adapters/trl_train.py``.
TRL 1.16.0 also has the loss types cispo, sapo, luspo and vespo, which are not the contract's
clipped objective; they have no adapter here.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
import warnings
from types import SimpleNamespace

import torch

from conformance import Unsupported
from conformance.adapters import pins, support
from conformance.contract import AGG_MODES

TRL = pins.PINS["trl"]
GT = "trl/trainer/grpo_trainer.py"
GC = "trl/trainer/grpo_config.py"
RT = "trl/trainer/rloo_trainer.py"
DT = "trl/trainer/dpo_trainer.py"
RWT = "trl/trainer/reward_trainer.py"
UT = "trl/trainer/utils.py"
# GRPOConfig.loss_type -> the contract's aggregation it performs (grpo_trainer.py:3153-3173)
LOSS_TYPE_AGG = {"grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm",
                 "dapo": "token-mean", "bnpo": "token-mean"}
#: GRPOConfig.loss_type's default in the pinned TRL (the plain variant's capabilities;
#: tests/test_adapter_trl.py checks it against the installed TRL)
DEFAULT_LOSS_TYPE = "dapo"
_at = support.citer("trl")


@functools.lru_cache(maxsize=None)
def _trl():
    """Import TRL once, on first use (this module loads without TRL installed)."""
    from transformers import TrainerState
    from trl import (
        DPOConfig,
        DPOTrainer,
        GRPOConfig,
        GRPOTrainer,
        RewardConfig,
        RewardTrainer,
        RLOOConfig,
        RLOOTrainer,
    )
    from trl.trainer.utils import selective_log_softmax
    return SimpleNamespace(GRPOConfig=GRPOConfig, GRPOTrainer=GRPOTrainer, RLOOConfig=RLOOConfig,
                           RLOOTrainer=RLOOTrainer, DPOConfig=DPOConfig, DPOTrainer=DPOTrainer,
                           RewardConfig=RewardConfig, RewardTrainer=RewardTrainer,
                           TrainerState=TrainerState, selective_log_softmax=selective_log_softmax)


_OUT = os.path.join(tempfile.gettempdir(), "rlconform-trl")      # output_dir; nothing is written


def _config(cls, **kwargs):
    """A real TRL config object (its ``__post_init__`` validation runs), on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)     # transformers' deprecation notices
        return cls(output_dir=_OUT, use_cpu=True, report_to="none", **kwargs)


# --- the stubs ------------------------------------------------------------------------------------

class _Accelerator:
    """``self.accelerator`` on one process: accelerate's gather/reduce return their input."""
    device = torch.device("cpu")
    process_index = 0
    num_processes = 1
    is_main_process = True
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x

    def unwrap_model(self, model):
        return model


class _Model:
    """``self.model``: in train mode, no gradient checkpointing; ``__call__`` is the forward."""
    training = True
    is_gradient_checkpointing = False

    def __init__(self, forward=None):
        self._forward = forward

    def __call__(self, **kwargs):
        return self._forward(**kwargs)


def _metric_containers(tr, maxlen):
    """The metric and log containers the trainers' ``__init__`` create (grpo_trainer.py:1085-1099,
    rloo_trainer.py, dpo_trainer.py:966)."""
    from collections import defaultdict, deque
    tr._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    tr._logs = {"images": deque(maxlen=maxlen), "prompt": deque(maxlen=maxlen),
                "completion": deque(maxlen=maxlen),
                "rewards": defaultdict(lambda: deque(maxlen=maxlen)),
                "advantages": deque(maxlen=maxlen),
                "extra": defaultdict(lambda: deque(maxlen=maxlen))}
    tr._pending_extra_logs = defaultdict(list)
    tr._pending_metrics = defaultdict(list)
    tr._total_train_tokens = 0
    tr._tp_size = 1
    tr.accelerator = _Accelerator()
    tr.state = _trl().TrainerState()


def _grpo_trainer(args, per_token_logps=None):
    """``object.__new__(GRPOTrainer)`` with the attributes ``GRPOTrainer.__init__`` copies from
    ``args`` (grpo_trainer.py:782-860, 944-983) and the stubs above."""
    t = _trl()
    tr = object.__new__(t.GRPOTrainer)
    tr.args = args
    tr.max_completion_length = args.max_completion_length
    tr.num_generations = args.num_generations
    tr.num_generations_eval = args.num_generations_eval or args.num_generations
    tr.pad_to_multiple_of = args.pad_to_multiple_of
    tr.use_vllm = args.use_vllm
    tr.vllm_importance_sampling_correction = args.vllm_importance_sampling_correction
    tr.loss_type = args.loss_type
    tr.multi_objective_aggregation = args.multi_objective_aggregation
    tr.aux_loss_enabled = False                           # not a mixture-of-experts model
    tr.scale_rewards = args.scale_rewards
    tr.importance_sampling_level = args.importance_sampling_level
    tr.off_policy_mask_threshold = args.off_policy_mask_threshold
    tr.mask_truncated_completions = args.mask_truncated_completions
    tr.top_entropy_quantile = args.top_entropy_quantile
    tr.entropy_coef = args.entropy_coef
    tr.use_adaptive_entropy = args.use_adaptive_entropy
    tr._entropy_bonus_enabled = tr.entropy_coef != 0.0 or tr.use_adaptive_entropy
    tr.num_iterations = args.num_iterations
    tr.epsilon_low = args.epsilon
    tr.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
    tr.beta = args.beta
    tr.log_multimodal = args.log_multimodal
    tr.environment_factories = None
    tr.environments = None
    tr.tools = None
    tr.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    tr.model = _Model()
    _metric_containers(tr, args.generation_batch_size)
    if per_token_logps is not None:
        # the model forward, replaced: it yields the given per-token log-probabilities
        tr._get_per_token_logps_and_entropies = lambda *a, **k: (
            per_token_logps, torch.zeros_like(per_token_logps), None)
    return tr


def _scored_batch(tr, scores, trainer):
    """Stub generation and reward for ``_generate_and_score_completions``: one prompt token and
    one completion token per sample; the reward function returns the given scores."""
    values = [float(s) for s in scores.detach().cpu().tolist()]
    B = len(values)

    def scores_reward(prompts, completions, completion_ids, **kwargs):
        return list(values)

    tr.reward_funcs = [scores_reward]
    tr.reward_processing_classes = [None]
    tr.reward_func_names = ["scores"]
    tr.reward_weights = torch.ones(1, dtype=torch.float32)   # grpo_trainer.py:576
    tr._tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1)
    if trainer == "grpo":
        tr._generate = lambda prompts: ([[0]] * B, [[1]] * B, None, ["c"] * B, None, {}, None, None)
    else:
        tr._generate = lambda prompts: ([[0]] * B, [[1]] * B, ["c"] * B)
    return [{"prompt": "p"} for _ in range(B)]


def _contiguous_groups(scores, group_ids):
    """The samples stably sorted into contiguous groups of equal size, as RepeatSampler hands
    them to the trainer; (order, G)."""
    return support.contiguous_groups(
        group_ids, "TRL's RepeatSampler gives every prompt num_generations samples and the "
        f"advantage code reshapes to (-1, G) ({_at(GT + ':1311, :2765')})", scores)


def _grpo_advantages(scores, group_ids, scale):
    order, G = _contiguous_groups(scores, group_ids)
    B = scores.shape[0]
    args = _config(_trl().GRPOConfig, num_generations=G, scale_rewards=scale,
                   per_device_train_batch_size=B)
    tr = _grpo_trainer(args)
    inputs = _scored_batch(tr, scores[order], "grpo")
    out = _trl().GRPOTrainer._generate_and_score_completions(tr, inputs)["advantages"]
    return support.restore(out, order)                 # uncast: TRL's float32


def _rloo_advantages(scores, group_ids, beta=0.0, logp=None, ref_logp=None):
    """RLOO's advantage path; with ``beta`` and per-token log-probs (one row per sample) the
    sequence-level KL enters the reward, as RLOOTrainer does (used to read its defaults)."""
    t = _trl()
    order, G = _contiguous_groups(scores, group_ids)
    B = scores.shape[0]
    args = _config(t.RLOOConfig, num_generations=G, beta=beta, per_device_train_batch_size=B)
    tr = object.__new__(t.RLOOTrainer)
    # the attributes RLOOTrainer.__init__ copies from args (rloo_trainer.py:537-669)
    tr.args = args
    tr.num_generations = args.num_generations
    tr.num_generations_eval = args.num_generations_eval or args.num_generations
    tr.pad_to_multiple_of = args.pad_to_multiple_of
    tr.mask_truncated_completions = args.mask_truncated_completions
    tr.normalize_advantages = args.normalize_advantages
    tr.reward_clip_range = args.reward_clip_range
    tr.beta = args.beta
    tr.ref_model = object() if beta else None
    tr.log_multimodal = args.log_multimodal
    tr.model = _Model()
    _metric_containers(tr, args.generation_batch_size)
    inputs = _scored_batch(tr, scores[order], "rloo")
    T = 1 if logp is None else logp.shape[1]
    if logp is not None:
        lp, rf = logp[order], ref_logp[order]
        tr._generate = lambda prompts: ([[0]] * B, [[1] * T] * B, ["c"] * B)
    else:
        lp = rf = torch.zeros(B, T, dtype=scores.dtype)

    def forward(model, *a, **k):      # the model forward, replaced (policy, then reference)
        x = rf if model is tr.ref_model else lp
        return x, torch.zeros_like(x), None
    tr._get_per_token_logps_and_entropies = forward
    out = t.RLOOTrainer._generate_and_score_completions(tr, inputs)["advantages"]
    return support.restore(out, order)                 # uncast: TRL's float32


def _grpo_loss(loss_type, logp, mask, advantages, old_logp=None, ref_logp=None, beta=0.0,
               clip_low=None, clip_high=None, delta=None, norm_len=None):
    """One ``GRPOTrainer._compute_loss`` call on a batch, as the trainer's step makes it."""
    B, T = logp.shape
    options = {}
    if clip_low is not None:
        options["epsilon"] = clip_low
    if clip_high is not None:
        options["epsilon_high"] = clip_high
    args = _config(_trl().GRPOConfig, loss_type=loss_type, beta=beta, delta=delta,
                   max_completion_length=T if norm_len is None else norm_len, **options)
    tr = _grpo_trainer(args, per_token_logps=logp)
    completion_mask = mask.to(torch.long)                       # grpo_trainer.py:2453
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long),
              "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long),
              "completion_mask": completion_mask,
              "advantages": advantages,
              "num_items_in_batch": tr.accelerator.gather(completion_mask.sum()).sum()}
    if old_logp is not None:
        inputs["old_per_token_logps"] = old_logp
    if ref_logp is not None:
        inputs["ref_per_token_logps"] = ref_logp
    return _trl().GRPOTrainer._compute_loss(tr, tr.model, inputs)


def _bare_dpo_trainer(loss_type: str, beta: float):
    """A ``DPOTrainer`` without ``__init__`` (no model, no dataset): the attributes its
    ``_compute_loss`` reads, set as ``__init__`` sets them from a ``DPOConfig``."""
    t = _trl()
    args = _config(t.DPOConfig, loss_type=[loss_type], beta=beta, precompute_ref_log_probs=True)
    tr = object.__new__(t.DPOTrainer)
    # the attributes DPOTrainer.__init__ copies from args (dpo_trainer.py:801-818)
    tr.args = args
    tr.beta = args.beta
    tr.precompute_ref_logps = args.precompute_ref_log_probs
    tr.loss_types = args.loss_type
    tr.loss_weights = args.loss_weights or [1.0] * len(tr.loss_types)
    tr.ld_alpha = args.ld_alpha
    tr.f_divergence_type = args.f_divergence_type
    tr.f_alpha_divergence_coef = args.f_alpha_divergence_coef
    tr.label_smoothing = args.label_smoothing
    tr.use_weighting = args.use_weighting
    tr.aux_loss_enabled = False
    _metric_containers(tr, 1)
    return tr


def _dpo_pair(loss_type, pc, pr, rc, rr, beta):
    """``DPOTrainer._compute_loss`` on one pair (it returns the batch mean), with precomputed
    reference log-probs and a one-token completion whose log-prob is the sequence's."""
    tr = _bare_dpo_trainer(loss_type, beta)
    log_probs = torch.stack([pc, pr]).unsqueeze(1)                 # (2, 1): [chosen, rejected]

    def forward(**kwargs):            # the policy forward, replaced
        z = torch.zeros_like(log_probs).detach()
        return SimpleNamespace(log_probs=log_probs, entropy=z, mean_logits=z,
                               is_top1=torch.zeros(2, 1, dtype=torch.bool), aux_loss=None)
    tr.model = _Model(forward)
    inputs = {"input_ids": torch.zeros(2, 2, dtype=torch.long),
              "attention_mask": torch.ones(2, 2, dtype=torch.long),
              "completion_mask": torch.tensor([[0, 1], [0, 1]]),
              "ref_chosen_logps": rc.reshape(1), "ref_rejected_logps": rr.reshape(1)}
    return type(tr)._compute_loss(tr, tr.model, inputs, return_outputs=False)


def _reward_pair(chosen, rejected, margin):
    t = _trl()
    args = _config(t.RewardConfig)
    tr = object.__new__(t.RewardTrainer)
    tr.args = args
    _metric_containers(tr, 1)
    logits = torch.stack([chosen, rejected]).unsqueeze(-1)          # (2, 1): [chosen, rejected]
    tr.model = _Model(lambda **kwargs: SimpleNamespace(logits=logits))
    inputs = {"input_ids": torch.zeros(2, 1, dtype=torch.long),
              "attention_mask": torch.ones(2, 1, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin.reshape(1)
    return t.RewardTrainer.compute_loss(tr, tr.model, inputs)


# --- framework defaults ---------------------------------------------------------------------------

def _probe_eps() -> float:
    """TRL's advantage eps is a constant in code, not a setting: read it from the code path (a
    two-sample group (1, -1) has std sqrt 2, so A = 1 / (sqrt 2 + eps))."""
    a = _grpo_advantages(torch.tensor([1.0, -1.0], dtype=torch.float64), torch.zeros(2, dtype=torch.long),
                         "group")
    return float(f"{1.0 / float(a[0]) - math.sqrt(2):.2g}")


def framework_defaults(loss_type: str | None = None, trainer: str = "grpo") -> dict:
    """TRL's defaults, read from its config dataclasses (and, for constants in code, the code
    path) at run time; the KL and group entries are those of ``trainer`` ("grpo" or "rloo")."""
    t = _trl()
    G, R = t.GRPOConfig, t.RLOOConfig
    loss_type = loss_type or support.field_default(G, "loss_type")
    eps_low = support.field_default(G, "epsilon")
    eps_high = support.field_default(G, "epsilon_high")
    beta = support.field_default(G, "beta")
    lp = torch.tensor([[0.5]], dtype=torch.float64)
    grpo_kl = float(_grpo_loss(loss_type, lp, torch.ones(1, 1, dtype=torch.bool),
                               torch.zeros(1, dtype=torch.float64), ref_logp=torch.zeros_like(lp),
                               beta=1.0))
    rloo_beta = support.field_default(R, "beta")
    two = torch.tensor([[0.5], [0.0]], dtype=torch.float64)
    rloo_a = _rloo_advantages(torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.long),
                              beta=1.0, logp=two, ref_logp=torch.zeros_like(two))
    rloo_kind = support.kl_kind(-float(rloo_a[0]), 0.5)   # A_0 = (0 - k(0.5)) - (0 - k(0)) = -k(0.5)
    out = {
        "loss_type": loss_type,                                     # GRPOConfig.loss_type
        "loss_agg": LOSS_TYPE_AGG.get(loss_type, loss_type),
        "clip_low": eps_low,                                        # GRPOConfig.epsilon
        "clip_high": eps_high if eps_high is not None else eps_low,  # grpo_trainer.py:946
        "dual_clip": support.field_default(G, "delta"),
        "kl_in": "loss" if beta else None,                          # GRPO: beta 0 loads no reference
        "kl_beta": beta,
        "kl_estimator": support.kl_kind(float(grpo_kl), 0.5) if beta else None,
        "kl_beta_if_in_loss": beta,                                 # GRPOConfig.beta (one setting)
        "kl_estimator_if_in_loss": support.kl_kind(float(grpo_kl), 0.5),            # a constant in code
        "kl_importance_weighted": support.field_default(G, "use_bias_correction_kl"),
        "kl_beta_if_in_reward": rloo_beta,                          # RLOOConfig.beta
        "kl_estimator_if_in_reward": rloo_kind,                     # a constant in code
        "gae_lambda": None,                                         # no PPO/GAE trainer in 1.16.0
        "gamma": None,
        "group_size": support.field_default(G, "num_generations"),
        "grpo_scale": support.field_default(G, "scale_rewards"),
        "max_completion_length": support.field_default(G, "max_completion_length"),  # dr_grpo's norm_len
        "adv_eps": _probe_eps(),                                    # a constant in code
        "rloo_normalize_advantages": support.field_default(R, "normalize_advantages"),
        "dpo_loss_type": support.field_default(t.DPOConfig, "loss_type"),
        "dpo_beta": support.field_default(t.DPOConfig, "beta"),
        "dpo_label_smoothing": support.field_default(t.DPOConfig, "label_smoothing"),
        "reward_center_coefficient": support.field_default(t.RewardConfig, "center_rewards_coefficient"),
    }
    if trainer == "rloo":        # RLOOTrainer: sequence-level KL in the reward, its own group size
        out.update({"loss_type": None, "loss_agg": None, "dual_clip": None,
                    "clip_low": support.field_default(R, "epsilon"),
                    "clip_high": support.field_default(R, "epsilon_high") or support.field_default(R, "epsilon"),
                    "kl_in": "reward" if rloo_beta else None, "kl_beta": rloo_beta,
                    "kl_estimator": rloo_kind if rloo_beta else None,
                    "group_size": support.field_default(R, "num_generations"), "grpo_scale": None})
    return out


# --- the adapters ---------------------------------------------------------------------------------

class _GRPO:
    """The functions GRPOTrainer computes, with ``GRPOConfig.loss_type`` = ``loss_type``."""
    loss_type: str | None = None                 # None: TRL's default, read at run time

    def _loss_type(self) -> str:
        return self.loss_type or support.field_default(_trl().GRPOConfig, "loss_type")

    def _loss_type_for(self, agg, function: str) -> str:
        """The loss_type that performs ``agg``: this variant's (``Unsupported`` for a contract mode
        it does not perform); a string that is no contract mode is handed to TRL as loss_type,
        which judges it."""
        support.honour(self, "agg", agg, function, why=_at(GT, "3153-3173"))
        return self._loss_type() if agg in AGG_MODES else agg

    def group_normalized_advantages(self, scores, group_ids, scale="group", eps=1e-6):
        # eps has no slot in TRL (a constant 1e-4, grpo_trainer.py:2787): declared deviations
        return _grpo_advantages(scores, group_ids, scale)

    def ppo_clip_loss(self, logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None,
                      dual_clip=None, agg="token-mean", norm_len=None):
        loss_type = self._loss_type_for(agg, "ppo_clip_loss")
        return _grpo_loss(loss_type, logp, mask, advantages, old_logp=old_logp, clip_low=clip_low,
                          clip_high=clip_high, delta=dual_clip, norm_len=norm_len)

    def policy_gradient_loss(self, logp, advantages, mask, agg="token-mean", norm_len=None):
        # on policy, TRL sets old_per_token_logps = per_token_logps.detach() (grpo_trainer.py:3066)
        return _grpo_loss(self._loss_type_for(agg, "policy_gradient_loss"), logp, mask, advantages, norm_len=norm_len)

    def aggregate(self, values, mask, mode="token-mean", norm_len=None):
        # the per-token GRPO loss at ratio 1 is -A (grpo_trainer.py:3120): A = -values
        return _grpo_loss(self._loss_type_for(mode, "aggregate"), torch.zeros_like(values).detach(), mask,
                          -values, norm_len=norm_len)

    def kl_estimate(self, logp, ref_logp, mask=None, kind="k3"):
        # GRPO's KL term is k3, a constant in code: no setting takes the kind
        support.translate(self, "kl_kind", kind, {"k3": None}, "kl_estimate",
                          why=f"the GRPO loss has one KL estimator, k3 ({_at(GT, '3100-3102')})")
        B, T = logp.shape
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool)
        loss_type = self._loss_type()
        rows = []
        for b in range(B):
            row = []
            for t in range(T):
                # one 1-token row with advantage 0 and beta = 1: the loss is that token's KL term
                zero = torch.zeros(1, dtype=logp.dtype)
                row.append(_grpo_loss(loss_type, logp[b:b + 1, t:t + 1], mask[b:b + 1, t:t + 1], zero,
                                      ref_logp=ref_logp[b:b + 1, t:t + 1], beta=1.0))
            rows.append(torch.stack(row))
        return torch.stack(rows)


class _RLOO:
    def leave_one_out_advantages(self, scores, group_ids):
        return _rloo_advantages(scores, group_ids)


class _DPO:
    def dpo_loss(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, beta=0.1, label_smoothing=0.0):
        support.honour(self, "label_smoothing", label_smoothing, "dpo_loss", default=0.0,
                       why="the 'sigmoid' loss has no label smoothing; DPOConfig.label_smoothing "
                           f"serves the 'robust' and 'exo_pair' losses ({_at(DT, '1387-1388')})")
        return self._pairs("sigmoid", policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                           ref_rejected_logps, beta)

    def ipo_loss(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, tau=0.1):
        # one-token completions: TRL's division by the completion length (dpo_trainer.py:1400) is 1
        return self._pairs("ipo", policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                           ref_rejected_logps, tau)

    @staticmethod
    def _pairs(loss_type, pc, pr, rc, rr, beta):
        n = pc.shape[0]
        if any(x.shape != (n,) for x in (pc, pr, rc, rr)):
            raise Unsupported("DPOTrainer's collator hands over whole pairs; these shapes have none")
        return support.per_pair(lambda i: _dpo_pair(loss_type, pc[i], pr[i], rc[i], rr[i], beta), n)


class _Reward:
    def bradley_terry_loss(self, chosen_rewards, rejected_rewards, margin=None):
        n = chosen_rewards.shape[0]
        if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
            raise Unsupported("RewardTrainer's collator hands over whole pairs (chosen, rejected); "
                              "these shapes have none")
        if margin is not None:
            # the collator makes margins a float32 tensor (reward_trainer.py:208)
            margin = torch.as_tensor(margin, dtype=torch.float32).expand(n)
        return support.per_pair(lambda i: _reward_pair(chosen_rewards[i], rejected_rewards[i],
                                                       None if margin is None else margin[i]),
                                n)


class _Logprobs:
    def token_logprobs(self, logits, tokens):
        return _trl().selective_log_softmax(logits, tokens)


# --- declarations ---------------------------------------------------------------------------------

_EPS_ONLY = ("divides by std + 1e-4, a constant in code (there is no eps setting), where the contract's "
             f"eps is 1e-6 ({_at(GT + ':2787')})")
#: the example in _EPS, re-run by tests/test_adapter_trl.py (the sentence states what a run gives)
_EPS = ("divides by std + 1e-4, a constant in code where the contract's eps is 1e-6, and works on "
        "float32 rewards, so an all-equal group of 6 rewards of 0.3 gets advantages of 2.98e-4 "
        "instead of 0 (its float32 mean differs from its members by rounding) "
        f"({_at(GT + ':1637, :2765-2787')})")
_KL_GRAD = ("with use_bias_correction_kl=True (the default) the KL term is k3 * exp(logp - old_logp), so "
            "on policy its gradient is (1 - exp(-l)) + k3 (DeepSeek-V3.2's unbiased reverse-KL "
            f"gradient), not the derivative of k3 ({_at(GT + ':3104-3105')})")
_MASK = support.masks_by_multiplication(_at(GT, "3153-3173"), code="(per_token_loss * mask).sum()")
#: the example in _DELTA, re-run by tests/test_adapter_trl.py
_DELTA = ("delta (the contract's dual_clip c) clamps the ratio at c on every token, whatever the sign "
          "of A, before the min with the clipped term, which is the dual-clip floor -c A only when "
          "c > 1 + epsilon_high (the help text recommends delta > 1 + epsilon): with c = 1.1 and "
          "epsilon_high = 0.28 a token with r = 1.26 and A = +1 gets loss -1.1 and no gradient "
          "instead of -1.26 with gradient -1.26, and one with r = 1.26 and A = -1 gets loss 1.26 "
          f"with gradient 1.26 instead of 1.1 with none ({_at(GT + ':3113-3120')}; "
          f"{_at(GC + ':697-703')})")
#: why float64 scores come back as float32 advantages (GRPOTrainer and RLOOTrainer alike)
_FLOAT32_REWARDS = ("stores the reward functions' scores in a float32 tensor (rewards_per_func: "
                    "torch.zeros of the default dtype, filled with torch.tensor(..., "
                    "dtype=torch.float32)), so float64 scores are rounded to float32 and the "
                    "advantages are computed and returned in float32 ({where})")

GRPO_DEVIATIONS = {
    "group_normalized_advantages/matches-reference": _EPS_ONLY,
    "group_normalized_advantages/exact-std-normalisation-bias": _EPS,
    "ppo_clip_loss/padding-nan": _MASK,
    "ppo_clip_loss/padding-inf": _MASK,
    "group_normalized_advantages/dtype-kept": _FLOAT32_REWARDS.format(where=_at(GT + ":1581, :1637")),
    "ppo_clip_loss/dual-clip-inside-clip-range": _DELTA,
    "ppo_clip_loss/rejects-dual-clip-at-most-one": support.no_validation(
        "delta (the dual clip)", _at(GT, 3116), "the ratio is clamped at any value given"),
    "policy_gradient_loss/matches-reference*": (
        "on policy the per-token loss is -A exp(logp - logp.detach()), whose value is -A, not "
        f"-A logp (the gradient is the same) ({_at(GT + ':3066, :3120')})"),
    "policy_gradient_loss/padding-nan": _MASK,
    "policy_gradient_loss/padding-inf": _MASK,
    "aggregate/padding-nan": _MASK,
    "aggregate/padding-inf": _MASK,
    "aggregate/rejects-mask-with-hole": (
        "does not check that the mask is a prefix; every loss_type's normalisation sums whatever "
        f"the mask selects ({_at(GT + ':3153-3173')})"),
    "kl_estimate/gradient-matches-reference": _KL_GRAD,
    "kl_estimate/exact-loss-gradients": _KL_GRAD,
    "kl_estimate/padding-nan": _MASK,
    "kl_estimate/padding-inf": _MASK,
    "kl_estimate/rejects-mixed-float-dtypes": support.type_promotion(_at(GT, "3100-3102")),
}

#: where TRL tracks a declared deviation: the pull request that made use_bias_correction_kl the
#: default, whose review measured the changed KL gradient
GRPO_UPSTREAM = {
    "kl_estimate/gradient-matches-reference": "https://github.com/huggingface/trl/pull/6503",
    "kl_estimate/exact-loss-gradients": "https://github.com/huggingface/trl/pull/6503",
    # the pull request that added delta: it says delta caps the ratio of negative-advantage
    # tokens and recommends delta > 1 + epsilon; the code caps every token's ratio
    "ppo_clip_loss/dual-clip-inside-clip-range": "https://github.com/huggingface/trl/pull/3434",
}

GRPO_SHIMS = {
    "group_normalized_advantages": (
        "sorts samples stably into contiguous groups of equal size and restores the caller's order "
        f"afterwards, as RepeatSampler hands them to the trainer ({_at(GT + ':1311')})"),
    "kl_estimate": (
        "one _compute_loss call per token (advantage 0, beta = 1), the per-token KL term times its "
        f"mask entry stacked back into (B, T) ({_at(GT + ':3100-3106, :3173')})"),
    "aggregate": (
        "advantages = -values at ratio 1 (old_per_token_logps = per_token_logps.detach()), where "
        f"the per-token loss -min(A, clip(1) A) is -A = values ({_at(GT + ':3066, :3120')})"),
}

#: passes that hold only because the adapter shapes the input so that TRL's behaviour cannot show
_IPO_LENGTH = ("one-token completions: TRL divides each IPO log-ratio by its completion's token count "
               "(chosen_scores / chosen_mask.sum(dim=1)), which is 1 here, so whether that length "
               f"normalisation is right cannot show ({_at(DT + ':1399-1402')}); the training check "
               "ipo/step-matches-recipe-* runs DPOTrainer on completions of unequal multi-token "
               "lengths, where it shows (a declared deviation of trl-dpo and trl)")
_BATCH_MEAN_DPO = ("one pair per call: DPOTrainer returns the batch mean (per_sequence_loss.mean()), so "
                   "how it weighs the pairs of a batch cannot show, only each pair's own loss "
                   f"({_at(DT + ':1528')})")
_BATCH_MEAN_REWARD = ("one pair per call: RewardTrainer returns the batch mean (logsigmoid(...).mean()), "
                      "so how it weighs the pairs of a batch cannot show, only each pair's own loss "
                      f"({_at(RWT + ':790-792')})")
_PREF = support.PREFERENCE_VALUE_CHECKS
DPO_QUALIFIED = {
    **support.qualify(_BATCH_MEAN_DPO, "dpo_loss", *_PREF["dpo_loss"]),
    **support.qualify(f"{_IPO_LENGTH}; {_BATCH_MEAN_DPO}", "ipo_loss", *_PREF["ipo_loss"]),
}
#: gradient-is-sigmoid-minus-one is a declared deviation (the float32 margin), not qualified
REWARD_QUALIFIED = support.qualify(
    _BATCH_MEAN_REWARD, "bradley_terry_loss",
    *(c for c in _PREF["bradley_terry_loss"] if c != "gradient-is-sigmoid-minus-one"))

RLOO_DEVIATIONS = {
    "leave_one_out_advantages/dtype-kept": _FLOAT32_REWARDS.format(where=_at(RT + ":1150, :1202")),
}
RLOO_SHIMS = {
    "leave_one_out_advantages": (
        "sorts samples stably into contiguous groups of equal size and restores the caller's order "
        f"afterwards, as RepeatSampler hands them to the trainer ({_at(RT + ':918')})"),
}

DPO_DEVIATIONS = {
    "dpo_loss/rejects-nonpositive-beta": support.no_validation(
        "beta", _at(DT, "801, :1388"), "beta <= 0 is used as given"),
    "ipo_loss/rejects-nonpositive-tau": support.no_validation(
        "beta (IPO's tau)", _at(DT, "801, :1404"), "a value <= 0 is used as given"),
}
DPO_SHIMS = {
    "dpo_loss": ("one call per pair (the loss is the batch mean), precomputed reference log-probs "
                 f"({_at(DT + ':1318-1319, :1528')})"),
    "ipo_loss": ("one call per pair with one-token completions, so TRL's division of each log-ratio by "
                 f"the completion length is by 1 ({_at(DT + ':1398-1404')})"),
}
#: the example in the margin declaration, re-run by tests/test_adapter_trl.py
REWARD_DEVIATIONS = {
    "bradley_terry_loss/gradient-is-sigmoid-minus-one": (
        "the collator makes the margins a float32 tensor (DataCollatorForPreference, "
        "dtype=torch.float), so with float64 rewards a margin of 0.7 is subtracted as "
        f"0.699999988 (float32's nearest value) ({_at(RWT + ':208')})"),
}
REWARD_SHIMS = {
    "bradley_terry_loss": ("one call per pair (the loss is the batch mean), margin as the collator's "
                           f"float32 tensor ({_at(RWT + ':208, :790')})"),
}


#: the algorithm whose recipe aggregates as each loss_type does (refimpl.recipes.OPTIONS): the
#: algorithms a GRPO variant's train_step implements
_RECIPE_AGG = {"grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm", "dapo": "token-mean"}


def _grpo_train_capabilities(loss_type: str) -> dict:
    """What GRPOTrainer's training step with ``loss_type`` honours, per algorithm: the algorithms
    whose recipe aggregates as ``loss_type`` does, the KL in the loss only (k3,
    grpo_trainer.py:3100-3102), every scale_rewards value, a temperature (grpo_trainer.py:1066-1077)."""
    agg = LOSS_TYPE_AGG[loss_type]
    algs = [a for a, mode in _RECIPE_AGG.items() if mode == agg]
    out: dict = {"algorithms": algs}
    for a in algs:
        out.update({f"{a}.agg": [agg], f"{a}.kl_in": ["loss"], f"{a}.kl_kind": ["k3"],
                    f"{a}.temperature": True})
    return out


def _grpo_capabilities(loss_type: str) -> dict:
    """What GRPOTrainer with ``loss_type`` honours: that loss_type's aggregation, the k3 KL of its
    loss (grpo_trainer.py:3100-3102), groups of one size (RepeatSampler, grpo_trainer.py:1311);
    and, for train_step, ``_grpo_train_capabilities``."""
    return {"agg": [LOSS_TYPE_AGG[loss_type]], "kl_kind": ["k3"], "unequal_groups": False,
            **_grpo_train_capabilities(loss_type)}


#: RLOOTrainer's step: the sequence-level KL (k1, rloo_trainer.py:1669) in the reward, REINFORCE on
#: the sequence log-probability (per_sequence_loss.mean(), rloo_trainer.py:1831), no dual clip,
#: no norm_len; groups of one size (RepeatSampler, rloo_trainer.py:918)
RLOO_CAPABILITIES = {"unequal_groups": False, "rloo.agg": ["seq-mean-token-sum"],
                     "rloo.kl_in": ["reward"], "rloo.kl_kind": ["k1"], "rloo.dual_clip": False,
                     "rloo.norm_len": False, "rloo.temperature": True}
DPO_CAPABILITIES = {"label_smoothing": False}             # loss_type "sigmoid" (dpo_trainer.py:1387)
FRAMEWORK = pins.framework("trl")


def _training(algorithms, loss_type=None) -> tuple[dict, dict, dict]:
    """(shims, known_deviations, qualified) of train_step for ``algorithms``
    (conformance/adapters/trl_train.py, which imports without TRL)."""
    from conformance.adapters import trl_train as tt
    grpo = [a for a in algorithms if a in tt.GRPO_FAMILY]
    shims = {}
    if grpo or "rloo" in algorithms:
        shims.update(tt.SHIMS_ONLINE)
        shims.update(tt.SHIMS_RUN)
    if {"dpo", "ipo", "reward_model"} & set(algorithms):
        shims["train_step"] = support.declarations({}, shims, tt.SHIMS_PREFERENCE).get("train_step")
    deviations = dict(tt.grpo_deviations(grpo, loss_type)) if grpo else {}
    if "rloo" in algorithms:
        deviations.update(tt.RLOO_DEVIATIONS)
    if "ipo" in algorithms:
        deviations.update(tt.IPO_DEVIATIONS)
    if "reward_model" in algorithms:
        deviations.update(tt.REWARD_DEVIATIONS_TRAIN)
    return shims, deviations, tt.qualified(algorithms)


class _Train:
    """``train_step`` through the trainer's real code path (conformance/adapters/trl_train.py,
    imported on first use)."""

    def train_step(self, model, ref_model, batch, config):
        from conformance.adapters import trl_train
        return trl_train.train_step(self, model, ref_model, batch, config)


class _Run:
    """``train_run``: a short real run through the trainer's own ``Trainer.train()``
    (conformance/adapters/trl_train.py, imported on first use); GRPO-family and RLOO variants."""

    def train_run(self, model_path, task, config, steps, seed, out_dir=None):
        from conformance.adapters import trl_train
        return trl_train.train_run(self, model_path, task, config, steps, seed, out_dir)


class TRLGRPO(_GRPO, _Train, _Run):
    """One ``loss_type`` of GRPOTrainer."""
    framework = FRAMEWORK
    shims = GRPO_SHIMS
    known_deviations = GRPO_DEVIATIONS
    upstream = GRPO_UPSTREAM

    def __init__(self, loss_type: str):
        self.loss_type = loss_type
        self.name = f"trl-{loss_type}"
        self.capabilities = _grpo_capabilities(loss_type)
        shims, deviations, qualified = _training(self.capabilities["algorithms"], loss_type)
        self.shims = {**GRPO_SHIMS, **shims}
        self.known_deviations = {**GRPO_DEVIATIONS, **deviations}
        self.qualified = qualified

    def framework_defaults(self) -> dict:
        return framework_defaults(self.loss_type)


class TRLDefault(_GRPO, _RLOO, _DPO, _Reward, _Logprobs, _Train, _Run):
    """TRL's defaults: every function, GRPO with its default loss_type."""
    name = "trl"
    framework = FRAMEWORK
    capabilities = {**_grpo_capabilities(DEFAULT_LOSS_TYPE), **RLOO_CAPABILITIES, **DPO_CAPABILITIES,
                    "algorithms": [*_grpo_train_capabilities(DEFAULT_LOSS_TYPE)["algorithms"], "rloo",
                                   "dpo", "ipo", "reward_model"],
                    # the preference steps aggregate no tokens: the GRPO "agg" above is not theirs
                    **{f"{a}.agg": list(AGG_MODES) for a in ("dpo", "ipo", "reward_model")}}
    _train = _training(capabilities["algorithms"], DEFAULT_LOSS_TYPE)
    shims = {**GRPO_SHIMS, **RLOO_SHIMS, **DPO_SHIMS, **REWARD_SHIMS, **_train[0]}
    known_deviations = {**GRPO_DEVIATIONS, **RLOO_DEVIATIONS, **DPO_DEVIATIONS, **REWARD_DEVIATIONS,
                        **_train[1]}
    qualified = {**DPO_QUALIFIED, **REWARD_QUALIFIED, **_train[2]}
    upstream = GRPO_UPSTREAM
    framework_defaults = staticmethod(framework_defaults)


class TRLRLOO(_RLOO, _Train, _Run):
    name = "trl-rloo"
    framework = FRAMEWORK
    capabilities = {**RLOO_CAPABILITIES, "algorithms": ["rloo"]}
    _train = _training(["rloo"])
    shims = {**RLOO_SHIMS, **_train[0]}
    known_deviations = {**RLOO_DEVIATIONS, **_train[1]}
    qualified = _train[2]

    def framework_defaults(self) -> dict:
        return framework_defaults(trainer="rloo")


class TRLDPO(_DPO, _Train):
    name = "trl-dpo"
    framework = FRAMEWORK
    capabilities = {**DPO_CAPABILITIES, "algorithms": ["dpo", "ipo"]}
    _train = _training(["dpo", "ipo"])
    shims = {**DPO_SHIMS, **_train[0]}
    known_deviations = {**DPO_DEVIATIONS, **_train[1]}
    qualified = {**DPO_QUALIFIED, **_train[2]}
    framework_defaults = staticmethod(framework_defaults)


class TRLReward(_Reward, _Train):
    name = "trl-reward"
    framework = FRAMEWORK
    capabilities: dict = {"algorithms": ["reward_model"]}   # every option of bradley_terry_loss
    _train = _training(["reward_model"])
    shims = {**REWARD_SHIMS, **_train[0]}
    known_deviations = {**REWARD_DEVIATIONS, **_train[1]}
    qualified = {**REWARD_QUALIFIED, **_train[2]}
    framework_defaults = staticmethod(framework_defaults)


trl = TRLDefault()
trl_grpo = TRLGRPO("grpo")
trl_dr_grpo = TRLGRPO("dr_grpo")
trl_dapo = TRLGRPO("dapo")
trl_bnpo = TRLGRPO("bnpo")
trl_rloo = TRLRLOO()
trl_dpo = TRLDPO()
trl_reward = TRLReward()
