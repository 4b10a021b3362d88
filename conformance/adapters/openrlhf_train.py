"""OpenRLHF 0.11.2 trainer-level steps: ``train_step`` through the PPO actor's (and critic's)
real ``training_step`` and the DPO trainer's real ``concatenated_forward`` (docs/contract.md,
"Training steps").

What runs of OpenRLHF's own code, loaded by file path as ``conformance/adapters/openrlhf.py``
loads the math files (stand-ins for deepspeed, ray, peft, flash-attn and the OpenRLHF modules
these files import are in ``sys.modules`` only while they load):

| step | OpenRLHF code that runs |
|---|---|
| policy / reference log-probs | ``Actor.forward`` (``openrlhf/models/actor.py:221-300``): position ids ``cumsum(mask) - 1`` with padded positions set to 1 (:262-263), float32 logits divided in place by ``Actor.temperature`` (:267-271, the ``--rollout.temperature`` both the actor, ppo_actor.py:525, and the reference, launcher.py:116, are built with), ``log_probs_from_logits`` on the rolled sequence, the last ``action_mask.shape[1]`` positions times the action mask (:289-298) |
| experience | ``RemoteExperienceMaker.make_experience`` (experience_maker.py:113-233): the KL of the reward (``compute_approx_kl`` of old and reference log-probs, when ``--algo.kl.use_loss`` is off), ``base_action_log_probs`` kept for the KL loss otherwise; then ``compute_advantages_and_returns`` (:238-340): group baselines, ``compute_reward``, cumulative returns or GAE, whitening |
| PPO actor step | ``ActorPPOTrainer.__init__`` (ppo_actor.py:39-106, builds ``PolicyLoss``) and ``ActorPPOTrainer.training_step`` (:259-407): ``PolicyLoss``, the KL loss (``compute_approx_kl`` with ``log_probs_old``, ``aggregate_loss``, ``* kl_ctl``), ``strategy.backward`` |
| micro-batch normalisers | ``iter_grad_accum_global_norm`` (utils/loss_utils.py:80-105), as ``ppo_train`` pairs each micro-batch with them (ppo_actor.py:184-193) |
| PPO critic step | ``CriticPPOTrainer.__init__`` / ``training_step`` (ppo_critic.py:27-184, ``ValueLoss``) with ``CriticModel.forward`` (models/model.py:272-317) on the given token classifier's base model and head |
| DPO / IPO step | ``DPOTrainer.__init__`` (dpo_trainer.py:32-104, builds ``DPOLoss(beta, label_smoothing, ipo)``), ``concatenated_forward`` / ``concatenated_inputs`` / ``_get_batch_logps`` (:306-384) through ``Actor.forward``; the loss as ``fit`` forms it (:157-181) |

Stubs (declared in each variant's ``shims``): DeepSpeed's engine (``strategy.backward`` runs
``(loss / gradient_accumulation_steps).backward()``, as DeepSpeed's ``engine.backward`` scales a
loss by 1/gas, which loss_utils.py:60-65 relies on; ``optimizer_step`` does nothing), Ray (the
model groups of ``make_experience`` are callables on the given models), the rollout (the batch's
``old_logp`` / ``old_values`` stand for the actor's and critic's rollout-time forwards), the
replay buffer and its shuffled DataLoader (contiguous micro-batches of ``B / grad_accum`` rows),
the DPO dataloader (the pairs rebuilt as OpenRLHF's reward dataset lays them out).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import types
from types import SimpleNamespace

import torch

from conformance import Unsupported
from conformance.adapters import openrlhf as base
from conformance.adapters import support

_at = base._at
_EM = base._EM


def _stand_in(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = []                    # a package, so that submodule stand-ins resolve
    module.__dict__.update(attrs)
    return module


def _remote(*args, **kwargs):
    """``ray.remote`` stand-in: the decorated class itself."""
    if args and isinstance(args[0], type):
        return args[0]
    return lambda cls: cls


def _missing(name):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"stand-in: {name} is not available to the rlconform adapter")
    return fail


@functools.lru_cache(maxsize=None)
def _tfw() -> SimpleNamespace:
    """Load ``actor.py``, ``model.py``, ``ray/ppo_actor.py``, ``ray/ppo_critic.py`` and
    ``dpo_trainer.py`` by path, on top of the math files ``base._fw()`` loaded."""
    fw = base._fw()
    root = fw.root
    pkg = f"{base._PRIVATE}_models"                   # base._fw() registered this package
    loss = fw.loss
    exp_module = sys.modules[fw.Experience.__module__]
    flash = _stand_in("flash_attn")
    temporary = {
        "deepspeed": _stand_in("deepspeed", utils=SimpleNamespace(set_z3_leaf_modules=_missing("deepspeed"))),
        "ray": _stand_in("ray", remote=_remote, get=lambda x: x, put=lambda x: x),
        "peft": _stand_in("peft", LoraConfig=_missing("peft"), TaskType=SimpleNamespace(CAUSAL_LM=None),
                          get_peft_model=_missing("peft")),
        "peft.tuners": _stand_in("peft.tuners"),
        "peft.tuners.lora": _stand_in("peft.tuners.lora", LoraLayer=type("LoraLayer", (), {})),
        "flash_attn": flash,
        "flash_attn.bert_padding": _stand_in(
            "flash_attn.bert_padding", index_first_axis=_missing("flash_attn"), pad_input=_missing("flash_attn"),
            rearrange=_missing("flash_attn"), unpad_input=_missing("flash_attn")),
        "flash_attn.utils": _stand_in("flash_attn.utils"),
        "flash_attn.utils.distributed": _stand_in("flash_attn.utils.distributed", all_gather=_missing("flash_attn")),
        "openrlhf": _stand_in("openrlhf"),
        "openrlhf.utils": _stand_in("openrlhf.utils", get_tokenizer=_missing("get_tokenizer")),
        "openrlhf.utils.logging_utils": _stand_in("openrlhf.utils.logging_utils", init_logger=logging.getLogger),
        "openrlhf.utils.deepspeed": _stand_in("openrlhf.utils.deepspeed",
                                              DeepspeedStrategy=type("DeepspeedStrategy", (), {})),
        "openrlhf.utils.deepspeed.deepspeed_utils": _stand_in(
            "openrlhf.utils.deepspeed.deepspeed_utils", offload_deepspeed_states=_missing("deepspeed"),
            reload_deepspeed_states=_missing("deepspeed")),
        "openrlhf.utils.distributed_util": _stand_in(
            "openrlhf.utils.distributed_util", stateless_init_process_group=_missing("distributed"),
            torch_dist_barrier_and_cuda_sync=lambda: None),
        "openrlhf.utils.loss_utils": fw.loss_utils,
        "openrlhf.utils.vlm_utils": _stand_in("openrlhf.utils.vlm_utils", merge_mm_train_inputs=_missing("vlm")),
        "openrlhf.utils.distributed_sampler": _stand_in(
            "openrlhf.utils.distributed_sampler", DistributedSampler=type("DistributedSampler", (), {})),
        "openrlhf.models.utils": fw.utils,
        "openrlhf.trainer": _stand_in("openrlhf.trainer"),
        "openrlhf.trainer.ppo_utils": _stand_in("openrlhf.trainer.ppo_utils",
                                                NaiveReplayBuffer=lambda *a, **k: SimpleNamespace()),
        "openrlhf.trainer.ppo_utils.experience": exp_module,
        "openrlhf.trainer.ray": _stand_in("openrlhf.trainer.ray"),
        "openrlhf.trainer.ray.launcher": _stand_in("openrlhf.trainer.ray.launcher",
                                                   BaseModelActor=type("BaseModelActor", (), {}),
                                                   RayActorGroup=type("RayActorGroup", (), {})),
        "openrlhf.trainer.ray.utils": _stand_in("openrlhf.trainer.ray.utils", get_physical_gpu_id=_missing("gpu")),
    }
    names = list(temporary) + ["openrlhf.models", "openrlhf.trainer.ray.ppo_actor",
                               "openrlhf.trainer.ray.ppo_critic", "openrlhf.trainer.dpo_trainer",
                               "openrlhf.trainer.ppo_utils.length_penalty", "openrlhf.utils.seqlen_balancing",
                               f"{pkg}.ring_attn_utils", f"{pkg}.actor", f"{pkg}.model"]
    saved = {k: sys.modules.get(k) for k in names}
    try:
        sys.modules.update(temporary)
        actor = base._load(f"{pkg}.actor", root / "models" / "actor.py")
        model = base._load(f"{pkg}.model", root / "models" / "model.py")
        sys.modules["openrlhf.models"] = _stand_in(
            "openrlhf.models", Actor=actor.Actor, PolicyLoss=loss.PolicyLoss, ValueLoss=loss.ValueLoss,
            DPOLoss=loss.DPOLoss, aggregate_loss=loss.aggregate_loss,
            get_llm_for_sequence_regression=model.get_llm_for_sequence_regression)
        ppo_actor = base._load("openrlhf.trainer.ray.ppo_actor", root / "trainer" / "ray" / "ppo_actor.py")
        ppo_critic = base._load("openrlhf.trainer.ray.ppo_critic", root / "trainer" / "ray" / "ppo_critic.py")
        dpo = base._load("openrlhf.trainer.dpo_trainer", root / "trainer" / "dpo_trainer.py")
        kl_ctl = base._load(f"{base._PRIVATE}_kl_controller", root / "trainer" / "ppo_utils" / "kl_controller.py")
        sys.modules["openrlhf.trainer.ppo_utils.length_penalty"] = sys.modules[f"{base._PRIVATE}_length_penalty"]
        sys.modules["openrlhf.utils.seqlen_balancing"] = sys.modules[f"{base._PRIVATE}_seqlen_balancing"]
        maker = base._load(f"{base._PRIVATE}_train_experience_maker",
                           root / "trainer" / "ppo_utils" / "experience_maker.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return SimpleNamespace(fw=fw, Actor=actor.Actor, CriticModel=model._get_critic_model(torch.nn.Module, None),
                           ActorPPOTrainer=ppo_actor.ActorPPOTrainer, CriticPPOTrainer=ppo_critic.CriticPPOTrainer,
                           DPOTrainer=dpo.DPOTrainer, FixedKLController=kl_ctl.FixedKLController,
                           RemoteExperienceMaker=maker.RemoteExperienceMaker)


# --- configuration ---------------------------------------------------------------------------------

def _tree(flat: dict) -> SimpleNamespace:
    """``{"--a.b.c": v}`` -> nested namespaces ``a.b.c = v`` (OpenRLHF's ``hierarchize``)."""
    root = SimpleNamespace()
    for flag, value in flat.items():
        parts = flag.lstrip("-").split(".")
        node = root
        for p in parts[:-1]:
            if not isinstance(getattr(node, p, None), SimpleNamespace):
                setattr(node, p, SimpleNamespace())
            node = getattr(node, p)
        setattr(node, parts[-1], value)
    return root


def _ppo_args(config: dict, estimator: str, B: int, k: int) -> SimpleNamespace:
    """The PPO entry point's defaults (cli/train_ppo_ray.py), then what ``config`` says, under
    OpenRLHF's option names; groups of ``n`` come from the batch."""
    args = _tree(base._cli_defaults("train_ppo_ray.py"))
    clip_high = config["clip_low"] if config["clip_high"] is None else config["clip_high"]
    args.actor.eps_clip_low_high = (config["clip_low"], clip_high)      # train_ppo_ray.py:633-634
    args.actor.dual_clip = config["dual_clip"]
    args.actor.loss_agg_mode = config["agg"]
    args.algo.advantage.estimator = estimator
    args.algo.advantage.gamma = float(config["gamma"])
    args.algo.advantage.lambd = float(config["lam"])
    args.algo.kl.init_coef = float(config["beta"])
    args.algo.kl.estimator = config["kl_kind"]
    args.algo.kl.use_loss = config["kl_in"] == "loss"
    args.rollout.micro_batch_size = B
    args.train.batch_size = B
    args.train.micro_batch_size = B // k
    threshold = list(args.algo.advantage.is_correction_threshold)   # train_ppo_ray.py:640-643
    if len(threshold) == 1:
        threshold.insert(0, 0.0)
    args.algo.advantage.is_correction_threshold = threshold
    args.rollout.temperature = float(config["temperature"])
    return args


class _Strategy:
    """Stands in for ``DeepspeedStrategy`` (utils/deepspeed/deepspeed.py): one process, no ring
    attention; ``backward`` divides by the gradient-accumulation steps as DeepSpeed's engine does
    (the scaling utils/loss_utils.py:60-65 pre-compensates) and keeps what it backpropagated;
    ``optimizer_step`` does nothing (no weight changes)."""

    ring_attn_group = None

    def __init__(self, args, gas: int):
        self.args = args
        self.accumulated_gradient = gas
        self.losses: list[torch.Tensor] = []

    def backward(self, loss, model, optimizer, **kwargs):
        scaled = loss / self.accumulated_gradient if self.accumulated_gradient > 1 else loss
        scaled.backward()
        self.losses.append(scaled.detach())

    def optimizer_step(self, *args, **kwargs):
        pass

    def get_grad_norm(self, model):
        return 0.0

    def is_rank_0(self):
        return True

    def all_reduce(self, x, *args, **kwargs):
        return x


_SCHEDULER = SimpleNamespace(get_last_lr=lambda: [0.0])


class _Group:
    """Stands in for a Ray actor group of ``make_experience``: ``async_run_method_batch`` runs
    ``fn`` on each sample list entry, one rank, and returns the results as ``ray.get`` would."""

    def __init__(self, fn):
        self.fn = fn

    def async_run_method_batch(self, method_name, **kwargs):
        n = len(next(iter(kwargs.values())))
        return [[self.fn(**{k: v[i] for k, v in kwargs.items()}) for i in range(n)]]

    def async_run_method(self, method_name, **kwargs):
        return None


def _actor(tfw, model, temperature: float):
    """``Actor(model)`` (actor.py:218-219); the else branch of ``__init__`` does not set
    ``packing_samples``, which ``forward`` reads (:236): the CLI default (False) is set."""
    actor = tfw.Actor(model, temperature=temperature)
    actor.packing_samples = False
    return actor


def _critic(tfw, value_model):
    """``CriticModel.forward`` (models/model.py:272-317) on the given token classifier: its base
    model under ``base_model_prefix``, its one-output head as the value head."""
    critic = tfw.CriticModel.__new__(tfw.CriticModel)
    torch.nn.Module.__init__(critic)
    prefix = value_model.base_model_prefix
    head = "score" if hasattr(value_model, "score") else "classifier"
    setattr(critic, prefix, getattr(value_model, prefix))
    setattr(critic, head, getattr(value_model, head))
    critic.base_model_prefix = prefix
    critic.value_head_prefix = head
    critic.packing_samples = False
    critic.normalize_reward = False
    return critic


def _rows(exp, rows: slice, cls):
    """An ``Experience`` of ``rows`` (the replay buffer's micro-batch; a layout step)."""
    out = {}
    for f in dataclasses.fields(cls):
        v = getattr(exp, f.name)
        if isinstance(v, torch.Tensor) and v.dim() >= 1:
            v = v[rows]
        elif isinstance(v, list) and len(v) == exp.sequences.shape[0]:
            v = v[rows]
        elif isinstance(v, dict):
            v = {key: (x[rows] if isinstance(x, (torch.Tensor, list)) and len(x) == exp.sequences.shape[0] else x)
                 for key, x in v.items()}
        out[f.name] = v
    return cls(**out)



# --- the steps -------------------------------------------------------------------------------------

def _zero(named: dict) -> None:
    for p in named.values():
        p.grad = None


def _collect(named: dict) -> dict:
    grads = {}
    for name, p in named.items():
        grads[name] = None if p.grad is None else p.grad.detach().clone()
        p.grad = None
    return grads


def _modes(*models):
    return [(m, m.training) for m in models if m is not None]


def _restore(modes) -> None:
    for m, training in modes:
        m.train(training)


def _common_checks(variant, config: dict) -> None:
    algorithm = config["algorithm"]
    if algorithm not in support.honoured(variant, "algorithms"):
        raise Unsupported(f"{variant.name} does not implement {algorithm!r} (its algorithms: "
                          f"{list(support.honoured(variant, 'algorithms'))})")


def online_step(variant, model, ref_model, batch: dict, config: dict) -> dict:
    """One PPO-actor optimisation step of ``variant.estimator`` (and, for ``ppo``, the critic's),
    through OpenRLHF's ``make_experience``, ``compute_advantages_and_returns`` and the
    ``training_step`` of ``ActorPPOTrainer`` / ``CriticPPOTrainer``."""
    _common_checks(variant, config)
    algorithm = config["algorithm"]
    agg = support.translate(variant, "agg", config["agg"], base.TOKEN_LEVEL, algorithm,
                            why="--actor.loss_agg_mode is token-mean or seq-mean-token-mean "
                                f"({_at('openrlhf/cli/train_ppo_ray.py', '441-448')})")
    support.honour(variant, "norm_len", config["norm_len"], algorithm,
                   why=f"aggregate_loss has no length normaliser ({_at('openrlhf/models/loss.py', '11-39')})")
    if config["kl_in"] not in support.honoured(variant, "kl_in", algorithm):
        raise Unsupported(f"{variant.name} does not put the KL in the {config['kl_in']} for {algorithm}")
    if algorithm in ("grpo", "dr_grpo", "dapo"):
        support.translate(variant, "scale", config["scale"], {variant.scale: None}, algorithm,
                          why=f"the estimator {variant.estimator} fixes the scale ({_at(_EM, '268-278')})")
    if algorithm == "ppo" and not config["whiten"]:
        raise Unsupported("estimator gae always whitens (at least subtracts the mean of) the advantages "
                          f"({_at(_EM, '325-338')})")
    del agg
    tfw = _tfw()
    fw = tfw.fw
    k = config["grad_accum"]
    B = batch["prompt_ids"].shape[0]
    if not isinstance(k, int) or k < 1 or B % k:
        raise ValueError(f"grad_accum must be a positive int dividing the batch size {B}, got {k!r}")
    args = _ppo_args(config, variant.estimator, B, k)
    if variant.estimator in ("group_norm", "dr_grpo", "rloo", "reinforce_baseline"):
        index, n = base._group_slots(batch["group_ids"])
    else:
        index, n = list(range(B)), 1
    args.rollout.n_samples_per_prompt = n
    temperature = float(config["temperature"])
    value_model = config.get("value_model") if algorithm == "ppo" else None
    modes = _modes(model, ref_model, value_model)
    named = dict(model.named_parameters())
    if value_model is not None:
        named.update({f"value_model.{n_}": p for n_, p in value_model.named_parameters()})
    _zero(named)
    try:
        actor = _actor(tfw, model, temperature)
        ref_actor = _actor(tfw, ref_model, temperature)
        ref_actor.eval()

        def reference_forward(sequences, action_mask, attention_mask):
            # ReferenceModelActor.forward (trainer/ray/launcher.py:128-152)
            with torch.no_grad():
                return ref_actor(sequences, action_mask, attention_mask)

        # the rollout: the actor's and critic's rollout-time forwards give the batch's old values
        rollout_logp = _Group(lambda **kw: batch["old_logp"])
        rollout_values = _Group(lambda **kw: batch["old_values"]) if value_model is not None else None
        sequences = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1).long()
        action_mask = batch["completion_mask"].bool()
        experience = fw.Experience(sequences=sequences, attention_mask=attention_mask, action_mask=action_mask,
                                   rewards=batch["scores"], index=index, info={})
        maker = tfw.RemoteExperienceMaker.__new__(tfw.RemoteExperienceMaker)
        kl_ctl = tfw.FixedKLController(args.algo.kl.init_coef)          # ppo_trainer.py:176
        maker.strategy, maker.args = SimpleNamespace(args=args), args
        maker.advantage_estimator = args.algo.advantage.estimator
        maker.actor_model_group = rollout_logp
        maker.critic_model_group = rollout_values
        maker.reward_model_group = None
        # the reference model exists only with a KL coefficient (cli/train_ppo_ray.py:42)
        maker.initial_model_group = _Group(reference_forward) if args.algo.kl.init_coef > 0 else None
        maker.kl_ctl = kl_ctl
        maker.tokenizer = None
        experiences = maker.compute_advantages_and_returns(maker.make_experience([experience]))
        experience = experiences[0]

        # the replay buffer's micro-batches: contiguous, micro_train_batch_size rows each
        rows = [slice(i * (B // k), (i + 1) * (B // k)) for i in range(k)]
        micro = [_rows(experience, r, fw.Experience) for r in rows]
        strategy = _Strategy(args, k)
        trainer = tfw.ActorPPOTrainer(strategy, actor, None, None, _SCHEDULER, micro_train_batch_size=B // k,
                                      tokenizer=None, vllm_engines=None)
        for step, (exp, info) in enumerate(fw.loss_utils.iter_grad_accum_global_norm(
                micro, strategy, strategy.accumulated_gradient, lambda e: e.action_mask)):
            trainer.training_step(exp, kl_ctl.value, step, info)
        loss = torch.stack(strategy.losses).sum()
        if value_model is not None:
            critic_strategy = _Strategy(args, k)
            critic = _critic(tfw, value_model)
            critic_trainer = tfw.CriticPPOTrainer(critic_strategy, critic, None, _SCHEDULER,
                                                  micro_train_batch_size=B // k, value_clip=config["value_clip"])
            for step, (exp, info) in enumerate(fw.loss_utils.iter_grad_accum_global_norm(
                    micro, critic_strategy, critic_strategy.accumulated_gradient, lambda e: e.action_mask)):
                critic_trainer.training_step(exp, step, info)
            loss = loss + torch.stack(critic_strategy.losses).sum()
        return {"loss": float(loss), "grads": _collect(named)}
    except BaseException:
        _zero(named)
        raise
    finally:
        _restore(modes)


def _dpo_pairs(batch: dict, pad_id: int):
    """The pairs as OpenRLHF's reward dataset lays them out for DPO (datasets/reward_dataset.py:
    138-199): each sequence the prompt's and the completion's real tokens, right-padded, and the
    prompt's real length (``extra``, :121-131)."""
    def side(name):
        rows, masks = [], []
        for b in range(batch["prompt_ids"].shape[0]):
            p = batch["prompt_ids"][b][batch["prompt_mask"][b].bool()]
            c = batch[f"{name}_ids"][b][batch[f"{name}_mask"][b].bool()]
            rows.append(torch.cat([p, c]))
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)], mask[b, :len(r)] = r, 1
        return ids, mask
    chosen_ids, c_mask = side("chosen")
    reject_ids, r_mask = side("rejected")
    prompt_id_lens = [int(m.sum()) for m in batch["prompt_mask"]]
    return chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens


def dpo_step(variant, model, ref_model, batch: dict, config: dict, pad_id: int) -> dict:
    """One DPO (IPO: ``--model.ipo_enable``) optimisation step: the body of ``DPOTrainer.fit``
    (dpo_trainer.py:152-181) per micro-batch, with its ``concatenated_forward`` and ``loss_fn``."""
    _common_checks(variant, config)
    ipo = config["algorithm"] == "ipo"
    tfw = _tfw()
    k = config["grad_accum"]
    n = batch["prompt_ids"].shape[0]
    if not isinstance(k, int) or k < 1 or n % k:
        raise ValueError(f"grad_accum must be a positive int dividing the number of pairs {n}, got {k!r}")
    args = _tree(base._cli_defaults("train_dpo.py"))
    args.model.beta = float(config["tau"] if ipo else config["beta"])
    args.model.label_smoothing = 0.0 if ipo else float(config["label_smoothing"])
    args.model.ipo_enable = ipo
    args.logger.wandb.key = None
    args.logger.tensorboard_dir = None
    strategy = _Strategy(args, k)
    modes = _modes(model, ref_model)
    named = dict(model.named_parameters())
    _zero(named)
    try:
        policy, reference = _actor(tfw, model, 1.0), _actor(tfw, ref_model, 1.0)
        trainer = tfw.DPOTrainer(policy, reference, strategy, SimpleNamespace(pad_token_id=pad_id), None, [], None,
                                 _SCHEDULER, beta=args.model.beta)
        trainer.model.train()                           # dpo_trainer.py:144-145
        trainer.ref_model.eval()
        m = n // k
        for i in range(k):
            mb = {key: v[i * m:(i + 1) * m] for key, v in batch.items()}
            chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens = _dpo_pairs(mb, pad_id)
            # dpo_trainer.py:157-181
            chosen_logps, rejected_logps, aux_loss, nll_loss = trainer.concatenated_forward(
                trainer.model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens)
            with torch.no_grad():
                reference_chosen_logps, reference_rejected_logps, _, _ = trainer.concatenated_forward(
                    trainer.ref_model, chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens)
            preference_loss, chosen_reward, reject_reward = trainer.loss_fn(
                chosen_logps, rejected_logps, reference_chosen_logps, reference_rejected_logps)
            if not trainer.aux_loss:
                aux_loss = 0
            if not trainer.nll_loss:
                nll_loss = 0
            loss = (preference_loss + aux_loss * trainer.args.model.aux_loss_coef
                    + nll_loss * trainer.args.model.nll_loss_coef)
            trainer.strategy.backward(loss, trainer.model, trainer.optimizer)
            trainer.strategy.optimizer_step(trainer.optimizer, trainer.model, trainer.scheduler)
        return {"loss": float(torch.stack(strategy.losses).sum()), "grads": _collect(named)}
    except BaseException:
        _zero(named)
        raise
    finally:
        _restore(modes)
