"""verl 0.9.1's training step on rlconform's models: the trainer's own path, from the rollout batch
to the gradients its optimizer would step on (``train_step``; imported lazily by ``verl.py``).

verl 0.9.1 has no ``DataParallelPPOActor`` any more (``verl/workers/actor/dp_actor.py`` and
``dp_critic.py`` are gone from the wheel): the actor and critic are ``TrainingWorker``s around an
engine (``verl/workers/engine_workers.py``, ``verl/workers/engine/fsdp/transformer_impl.py``), fed
no-padding (nested, jagged) tensors, and their loss is ``verl/workers/utils/losses.py``.

What runs, in the order ``RayPPOTrainer.fit`` runs it (verl/trainer/ppo/ray_trainer.py):

| step                                   | verl code that runs (0.9.1)                               |
|----------------------------------------|-----------------------------------------------------------|
| rollout batch (DataProto)              | ``compute_position_id_with_mask`` (utils/model.py:240, as agent_loop.py:930), ``compute_response_mask`` (ray_trainer.py:120) |
| temperature                            | ``batch.meta_info["temperature"]`` (ray_trainer.py:1479)   |
| reference log-probs                    | ``RayPPOTrainer._compute_ref_log_prob`` (ray_trainer.py:1266) -> ``ActorRolloutRefWorker.compute_ref_log_prob`` -> ``TrainingWorker.infer_batch`` -> ``FSDPEngine.infer_batch`` / ``forward_backward_batch`` / ``FSDPEngineWithLMHead.forward_step`` |
| values (ppo)                           | ``RayPPOTrainer._compute_values`` (ray_trainer.py:1252) is not run: the rollout values are the batch's ``old_values`` |
| KL in the reward                       | ``apply_kl_penalty`` (ray_trainer.py:78) with a ``FixedKLController`` |
| advantages                             | ``compute_advantage`` (ray_trainer.py:187), on ``uid`` = group ids |
| critic update (ppo)                    | ``RayPPOTrainer._update_critic`` (ray_trainer.py:1378) -> ``TrainingWorker.train_mini_batch`` -> ``value_loss`` (losses.py:147) |
| actor update                           | ``RayPPOTrainer._update_actor`` (ray_trainer.py:1327) -> ``ActorRolloutRefWorker.update_actor`` -> ``TrainingWorker.train_mini_batch`` / ``train_batch`` -> ``BaseEngine.train_batch`` (base.py:113) -> ``FSDPEngine.forward_backward_batch`` (micro-batches, ``loss.backward()``) -> ``ppo_loss`` (losses.py:57) |

Stubs (``STUBS``, each with its source): Ray and the worker groups (the trainer's ``*_wg`` call the
worker methods in process); ``torch.distributed`` is a one-rank gloo group; the FSDP wrapping, model
loading and optimizer construction of ``FSDPEngine.initialize`` are replaced by the given model
(float32, no FSDP) and an optimizer whose ``step`` is never called: ``optimizer_step`` reads the
gradients instead; old log-probs are the rollout's (``old_logp``) instead of the actor's
recomputation.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import torch

from conformance import Unsupported
from conformance.adapters import support

_at = support.citer("verl")
RT = "verl/trainer/ppo/ray_trainer.py"
FS = "verl/workers/engine/fsdp/transformer_impl.py"
EW = "verl/workers/engine_workers.py"
LS = "verl/workers/utils/losses.py"
CA = "verl/trainer/ppo/core_algos.py"

#: the contract's algorithm -> verl's algorithm.adv_estimator
ESTIMATORS = {"grpo": "grpo", "dr_grpo": "grpo", "dapo": "grpo", "rloo": "rloo",
              "reinforce_pp": "reinforce_plus_plus", "ppo": "gae"}
ALGORITHMS = tuple(ESTIMATORS)
KL_NAMES = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}


#: what verl's trainer, workers and engine import beyond the minimal install (verl_install.sh)
WORKER_DEPENDENCIES = ("peft", "torchdata", "datasets", "uvicorn", "fastapi", "cachetools")


def available() -> bool:
    """Whether verl's trainer path can import here (found without importing it)."""
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("verl", *WORKER_DEPENDENCIES))


@functools.lru_cache(maxsize=None)
def _verl():
    """verl's trainer, worker and engine modules (needs more than the minimal install: peft,
    torchdata, datasets, uvicorn, fastapi, cachetools)."""
    try:
        from verl import DataProto
        from verl.trainer.ppo import core_algos, ray_trainer
        from verl.utils import tensordict_utils as tu
        from verl.utils.model import compute_position_id_with_mask
        from verl.workers import engine_workers
        from verl.trainer.config import AlgoConfig, CheckpointConfig
        from verl.workers.config import (ActorConfig, CriticConfig, FSDPEngineConfig,
                                         FSDPOptimizerConfig, HFModelConfig)
        from verl.workers.engine.fsdp import transformer_impl
        from verl.workers.utils import losses
    except ImportError as exc:      # the minimal install (core_algos only)
        raise Unsupported(f"verl's trainer does not import here ({exc}); train_step needs verl's "
                          "worker dependencies (peft, torchdata, datasets, uvicorn, fastapi, "
                          "cachetools)") from None
    return SimpleNamespace(DataProto=DataProto, ca=core_algos, rt=ray_trainer, tu=tu,
                           position_ids=compute_position_id_with_mask, ew=engine_workers,
                           AlgoConfig=AlgoConfig, ActorConfig=ActorConfig, CheckpointConfig=CheckpointConfig,
                           CriticConfig=CriticConfig, EngineConfig=FSDPEngineConfig,
                           OptimConfig=FSDPOptimizerConfig, HFModelConfig=HFModelConfig,
                           fsdp=transformer_impl, losses=losses)


def _cpu_platform():
    """verl 0.9.1 registers no CPU platform: without an accelerator it falls back to 'nvidia'
    (verl/plugin/platform/platform_manager.py:117), whose current_device() is
    torch.cuda.current_device(). The stub: the CUDA platform with device 'cpu' and a device
    module whose memory figures are 0."""
    from verl.plugin.platform import platform_manager
    from verl.plugin.platform.platform_cuda import PlatformCUDA
    current = platform_manager.get_platform()
    if current.device_name == "cpu" or torch.cuda.is_available():
        return

    class _Memory:
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(torch.cpu, name, lambda *a, **k: 0)

    class PlatformCPU(PlatformCUDA):
        device_name = "cpu"
        device_module = _Memory()

        def current_device(self):
            return "cpu"

        def is_available(self):
            return True

        def synchronize(self, device_index=None):
            return None

        def empty_cache(self):
            return None

        def communication_backend_name(self):
            return "gloo"

    platform_manager.set_platform(PlatformCPU())


def _process_group():
    """A one-rank gloo group: the engine all-reduces the token count over its data-parallel group
    (transformer_impl.py:728-731) and asks the world size."""
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


# --- the engine and worker, without Ray and FSDP --------------------------------------------------

class _Optimizer(torch.optim.Optimizer):
    """The optimizer the engine zeroes (``optimizer_zero_grad``) and would step: never stepped."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.0})

    def step(self, closure=None):                                       # pragma: no cover
        raise AssertionError("rlconform's train_step never steps the optimizer")


def _engine(v, model, model_path, rmpad, forward_only, micro, value=False):
    model_config = v.HFModelConfig(path=model_path, use_remove_padding=rmpad, load_tokenizer=False)
    engine_config = v.EngineConfig(
        strategy="fsdp", forward_only=forward_only, use_dynamic_bsz=False,
        micro_batch_size_per_gpu=micro, infer_micro_batch_size_per_gpu=micro,
        use_remove_padding=rmpad, use_torch_compile=False,
        mixed_precision={"param_dtype": "fp32", "reduce_dtype": "fp32", "buffer_dtype": "fp32"})
    cls = v.fsdp.FSDPEngineWithValueHead if value else v.fsdp.FSDPEngineWithLMHead
    engine = cls(model_config=model_config, engine_config=engine_config,
                 optimizer_config=v.OptimConfig(lr=1e-6), checkpoint_config=v.CheckpointConfig())
    # stub of FSDPEngine.initialize / _build_model_optimizer (transformer_impl.py:207, :588): the
    # given model, unwrapped, in float32 (what _build_fsdp_module sets from mixed_precision
    # param_dtype fp32, transformer_impl.py:403), and an optimizer that is never stepped
    engine.module = model
    engine._autocast_dtype = torch.float32
    engine.scaler = None
    engine.optimizer = _Optimizer(model.parameters())
    engine.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(engine.optimizer, lambda _: 1.0)
    engine.captured = []

    def optimizer_step():      # stub of FSDPEngine.optimizer_step (transformer_impl.py:788)
        engine.captured.append({n: None if p.grad is None else p.grad.detach().clone()
                                for n, p in model.named_parameters()})
        return 0.0
    engine.optimizer_step = optimizer_step
    return engine, engine_config, model_config


def _worker(v, engine, engine_config, model_config, loss_fn):
    """A TrainingWorker (engine_workers.py:77) without Ray: its methods run in process."""
    w = object.__new__(v.ew.TrainingWorker)
    w.engine, w.engine_config, w.model_config = engine, engine_config, model_config
    from verl.utils.profiler import DistProfiler
    # TrainingWorker.__init__ builds a disabled DistProfiler when no profiler is configured
    w.loss_fn, w.profiler = loss_fn, DistProfiler(rank=0, config=None)
    # the MFU metric only (engine_workers.py:229-233): verl's FlopsCounter asks the device's peak
    # flops, which has no CPU entry; mfu is reported as 0
    w.flops_counter = SimpleNamespace(estimate_flops=lambda *a, **k: (0.0, 1.0))
    w.device_name = "cpu"
    return w


class _Group:
    """A worker group: the trainer's ``*_wg.method(data)`` runs the worker's method here."""

    def __init__(self, worker_cls, **attrs):
        self._stub = object.__new__(worker_cls)
        self._stub.__dict__.update(attrs, enable_routing_replay=False)
        self._cls = worker_cls

    def __getattr__(self, name):
        from verl.single_controller.base.decorator import MAGIC_ATTR
        method = getattr(self._cls, name)
        call = functools.partial(method, self._stub)
        if getattr(method, MAGIC_ATTR, {}).get("blocking", True):
            return call
        # a non-blocking method returns a future to the driver, which calls .get() on it
        return lambda *a, **k: SimpleNamespace(get=functools.partial(lambda r: r, call(*a, **k)))


# --- the rollout batch ------------------------------------------------------------------------

def _dataproto(v, batch, config, scores_dtype):
    prompts, responses = batch["prompt_ids"], batch["completion_ids"]
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1).long()
    T = responses.shape[1]
    data = {
        "prompts": prompts, "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": v.position_ids(attention_mask),
        "old_log_probs": batch["old_logp"],
    }
    # the reward manager writes the score on the last response token (naive.py:153)
    lengths = batch["completion_mask"].sum(dim=1).long()
    scores = torch.zeros(prompts.shape[0], T, dtype=scores_dtype)
    scores[torch.arange(prompts.shape[0]), lengths - 1] = batch["scores"].to(scores_dtype)
    data["token_level_scores"] = scores
    if config["algorithm"] == "ppo":
        data["values"] = batch["old_values"].to(scores_dtype)
    dp = v.DataProto.from_single_dict(data)
    dp.non_tensor_batch["uid"] = np.array([str(int(g)) for g in batch["group_ids"]], dtype=object)
    dp.batch["response_mask"] = v.rt.compute_response_mask(dp)
    dp.meta_info["temperature"] = float(config["temperature"])
    return dp


def _omega(config, B, k, estimator):
    from omegaconf import OmegaConf
    return OmegaConf.create({
        "actor_rollout_ref": {
            "rollout": {"n": 1, "temperature": float(config["temperature"]),
                        "multi_turn": {"enable": False}},
            "actor": {"ppo_mini_batch_size": B, "ppo_epochs": 1, "data_loader_seed": 42,
                      "shuffle": False, "calculate_entropy": False, "entropy_coeff": 0.0,
                      "ppo_micro_batch_size_per_gpu": B // k},
        },
        "critic": {"ppo_mini_batch_size": B, "ppo_epochs": 1, "data_loader_seed": 42,
                   "shuffle": False},
        "algorithm": {"adv_estimator": estimator, "gamma": float(config["gamma"]),
                      "lam": float(config["lam"]), "norm_adv_by_std_in_grpo": True},
    })


def actor_config(v, config, agg):
    """The ActorConfig verl's trainer would build for ``config`` (``actor.*`` settings)."""
    kl_in_loss = config["kl_in"] == "loss" and config["algorithm"] not in ("reinforce_pp", "ppo")
    return v.ActorConfig(
        strategy="fsdp", rollout_n=1, ppo_mini_batch_size=1, ppo_micro_batch_size_per_gpu=1,
        loss_agg_mode=agg, loss_scale_factor=config["norm_len"],
        clip_ratio=config["clip_low"], clip_ratio_low=config["clip_low"],
        clip_ratio_high=config["clip_low"] if config["clip_high"] is None else config["clip_high"],
        clip_ratio_c=math.inf if config["dual_clip"] is None else config["dual_clip"],
        use_kl_loss=kl_in_loss, kl_loss_coef=float(config["beta"]),
        kl_loss_type=KL_NAMES.get(config["kl_kind"], config["kl_kind"]), entropy_coeff=0.0)


# --- the step ---------------------------------------------------------------------------------

def train_step(model, ref_model, batch, config, *, agg, rmpad=False):
    """One optimisation step of verl's PPO trainer; returns ``{"loss", "grads"}`` (verl runs the
    backward itself, micro-batch by micro-batch)."""
    v = _verl()
    _cpu_platform()
    _process_group()
    alg = config["algorithm"]
    if alg not in ESTIMATORS:
        raise Unsupported(f"verl's PPO trainer has no {alg!r}")
    B = batch["prompt_ids"].shape[0]
    k = config["grad_accum"]
    if B % k:
        raise ValueError(f"grad_accum {k} does not divide the batch size {B}")
    estimator = ESTIMATORS[alg]
    # options verl's trainer has no setting for: compute_advantage passes no epsilon to GRPO
    # (ray_trainer.py:240-245, default 1e-6, core_algos.py:272); masked_whiten adds a fixed 1e-8
    # (torch_functional.py:343); compute_gae_advantage_return always whitens (core_algos.py:262)
    if estimator == "grpo" and config["eps"] != 1e-6:
        raise Unsupported(f"eps={config['eps']!r}: verl's GRPO advantage uses epsilon 1e-6 "
                          f"({_at(RT, '240-245')})")
    if alg == "reinforce_pp" and config["eps"] != 1e-8:
        raise Unsupported(f"eps={config['eps']!r}: masked_whiten adds a fixed 1e-8 "
                          f"({_at('verl/utils/torch_functional.py', 343)})")
    if alg == "ppo" and not config["whiten"]:
        raise Unsupported(f"whiten=False: verl's GAE always whitens ({_at(CA, 262)})")
    trainer = SimpleNamespace(config=_omega(config, B, k, estimator), distillation_config=None,
                              ref_in_actor=False, use_critic=alg == "ppo")
    dtype = batch["old_logp"].dtype
    data = _dataproto(v, batch, config, dtype)

    # reference log-probs: the ref worker, forward only, the batch's temperature
    ref_engine, ref_ec, ref_mc = _engine(v, ref_model, config["ref_model_path"], rmpad, True, B // k)
    ref_worker = _worker(v, ref_engine, ref_ec, ref_mc, None)
    trainer.ref_policy_wg = _Group(v.ew.ActorRolloutRefWorker, ref=ref_worker)
    data = data.union(v.rt.RayPPOTrainer._compute_ref_log_prob(trainer, data))

    # rewards: the KL in the reward (algorithm.use_kl_in_reward) or the scores
    kl_in_reward = alg in ("reinforce_pp", "ppo") or config["kl_in"] == "reward"
    if kl_in_reward:
        kl_ctrl = v.ca.FixedKLController(kl_coef=float(config["beta"]))
        data, _ = v.rt.apply_kl_penalty(data, kl_ctrl=kl_ctrl,
                                        kl_penalty=KL_NAMES.get(config["kl_kind"], config["kl_kind"]))
    else:
        data.batch["token_level_rewards"] = data.batch["token_level_scores"]

    # advantages, on the driver
    by_std = {"group": True, "none": False}.get(config["scale"])
    if estimator == "grpo" and by_std is None:
        raise Unsupported(f"scale={config['scale']!r}: norm_adv_by_std_in_grpo is a bool")
    algo = v.AlgoConfig(adv_estimator=estimator, gamma=float(config["gamma"]),
                      lam=float(config["lam"]), norm_adv_by_std_in_grpo=bool(by_std))
    data = v.rt.compute_advantage(data, adv_estimator=estimator, gamma=float(config["gamma"]),
                                  lam=float(config["lam"]), num_repeat=1,
                                  norm_adv_by_std_in_grpo=bool(by_std), config=algo)

    grads = {}
    losses = []
    if alg == "ppo":
        vm = config["value_model"]
        c_engine, c_ec, c_mc = _engine(v, vm, config["value_model_path"], rmpad, False, B // k,
                                       value=True)
        critic_cfg = v.CriticConfig(strategy="fsdp", rollout_n=1, ppo_mini_batch_size=1,
                                    ppo_micro_batch_size_per_gpu=1, loss_agg_mode=agg,
                                    loss_scale_factor=config["norm_len"],
                                    cliprange_value=math.inf if config["value_clip"] is None
                                    else config["value_clip"])
        c_worker = _worker(v, c_engine, c_ec, c_mc,
                           functools.partial(v.losses.value_loss, config=critic_cfg))
        trainer.critic_wg = _Group(v.ew.TrainingWorker, **c_worker.__dict__)
        with _keep_grads(vm):
            out = v.rt.RayPPOTrainer._update_critic(trainer, data)
        grads.update({f"value_model.{n}": g for n, g in c_engine.captured[-1].items()})
        losses.append(out.meta_info["metrics"]["critic/loss"])

    a_engine, a_ec, a_mc = _engine(v, model, config["model_path"], rmpad, False, B // k)
    cfg = actor_config(v, config, agg)
    a_worker = _worker(v, a_engine, a_ec, a_mc, functools.partial(v.losses.ppo_loss, config=cfg))
    trainer.actor_rollout_wg = _Group(v.ew.ActorRolloutRefWorker, actor=a_worker)
    with _keep_grads(model):
        out = v.rt.RayPPOTrainer._update_actor(trainer, data)
    grads.update(a_engine.captured[-1])
    losses.append(out.meta_info["metrics"]["actor/loss"])
    loss = sum(float(np.sum(x)) for x in losses)
    missing = [n for n, g in grads.items() if g is None]
    if missing:
        raise RuntimeError(f"verl's step left {missing[:3]} without a gradient")
    return {"loss": loss, "grads": grads}


class _keep_grads:
    """Zero the model's .grad before verl's backward and leave it as it was (None) after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = [p.grad for p in self.model.parameters()]
        for p in self.model.parameters():
            p.grad = None

    def __exit__(self, *exc):
        for p, g in zip(self.model.parameters(), self.saved):
            p.grad = g


# --- declarations (lines of verl 0.9.1) ------------------------------------------------------

SHIM = (
    "runs RayPPOTrainer's own steps in process: _compute_ref_log_prob (" + _at(RT, 1266) + "), "
    "apply_kl_penalty (" + _at(RT, 78) + ") with a FixedKLController, compute_advantage "
    "(" + _at(RT, 187) + "), _update_critic (" + _at(RT, 1378) + ") and _update_actor "
    "(" + _at(RT, 1327) + "), which reach TrainingWorker.train_mini_batch / infer_batch "
    "(" + _at(EW, "243, :398") + "), BaseEngine.train_batch (" + _at("verl/workers/engine/base.py", 113)
    + "), FSDPEngine.forward_backward_batch (" + _at(FS, 724) + ") and ppo_loss / value_loss "
    "(" + _at(LS, "57, :147") + "); stubbed: Ray (the worker groups call the worker methods in "
    "process, a non-blocking one returns its result as a future), a one-rank gloo process group, "
    "a CPU platform (verl 0.9.1 has none and falls back to CUDA, "
    + _at("verl/plugin/platform/platform_manager.py", 117) + "), FSDPEngine.initialize (the "
    "given model, unwrapped, float32 as mixed_precision param_dtype fp32 gives, "
    + _at(FS, 403) + "; the model's own attention, sdpa, where verl asks flash_attention_2, "
    + _at("verl/workers/config/model.py", 185) + "; verl's monkey patch, which rewires flash "
    "attention for Ulysses, not applied), optimizer_step (" + _at(FS, 788) + ": reads the "
    "gradients, never steps), the MFU counter (metrics only); the rollout batch is built as the "
    "agent loop builds it (position ids by compute_position_id_with_mask, "
    + _at("verl/experimental/agent_loop/agent_loop.py", 930) + "; the score on the last "
    "response token, " + _at("verl/workers/reward_manager/naive.py", 153) + "), old log-probs "
    "are the rollout's (bypassing _compute_old_log_prob, " + _at(RT, 1290) + ") and for ppo "
    "the values are the batch's old_values (bypassing _compute_values, " + _at(RT, 1252) + "); "
    "one mini-batch of the whole batch (ppo_mini_batch_size x rollout.n = B, 1 epoch, no "
    "shuffle), micro-batches of B / grad_accum (use_dynamic_bsz off)")

_NAN_REWARD = (
    "with the KL in the reward, apply_kl_penalty masks by multiplying, kld * response_mask, so NaN "
    "in padded old_log_probs becomes NaN rewards, advantages and loss (" + _at(RT, "100-103") + ")")

_NO_VF_COEF = (
    "verl trains the critic with its own optimizer on value_loss alone (" + _at(RT, 1378) + ", "
    + _at(LS, "186-197") + "; CriticConfig has no value-loss coefficient), so the value model's "
    "gradients are 1 / vf_coef times the recipe's (at vf_coef 0.5: relative L2 1.00, cosine "
    "1.000000) and the step's loss is policy loss + value loss")

DEVIATIONS = {
    **{f"{alg}/nan-old-logp-ignored": _NAN_REWARD for alg in ("rloo", "reinforce_pp", "ppo")},
    "ppo/step-matches-recipe-*": _NO_VF_COEF,
    "ppo/temperature": _NO_VF_COEF,
    "ppo/config-honoured": _NO_VF_COEF,
}
