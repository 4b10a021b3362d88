"""skyrl-train 0.3.1 trainer-level step: ``train_step`` through skyrl's real trainer and policy
worker code (docs/contract.md, "Training steps").

skyrl's trainer modules import far more than a CPU machine has (datasets, fastapi, peft,
flash-attn, skyrl_gym, torchdata): while ``skyrl_train.trainer``, ``skyrl_train.workers.worker``
and ``skyrl_train.model_wrapper`` import, a finder placed last on ``sys.meta_path`` answers for
those missing packages only, with stand-in modules whose names are inert classes (calling one
raises). Afterwards the stand-ins and every ``skyrl_train`` module are taken out of
``sys.modules`` again (the loaded functions keep their globals).

| step | skyrl code that runs |
|---|---|
| reference log-probs | ``RefWorkerBase._forward_micro_batch`` (workers/worker.py:1078-1092) through ``HFModelWrapper.forward`` (model_wrapper.py:280-394): position ids ``cumsum(mask) - 1`` with padded positions set to 1 (:291-292), logits divided in place by the temperature (:333, the reference worker passes none: 1.0), ``logprobs_from_logits`` on the rolled sequence, the last ``num_actions`` positions |
| KL in the reward | ``RayPPOTrainer.apply_reward_kl_penalty`` (trainer.py:1000-1054) when ``use_kl_in_reward`` |
| advantages | ``RayPPOTrainer.compute_advantages_and_returns`` (trainer.py:721-823) -> ``ppo_utils.compute_advantages_and_returns`` and the registered estimator; ``normalize_advantages_dict`` when ``advantage_batch_normalize`` (trainer.py:264-265) |
| policy step | ``PolicyWorkerBase.ppo_train`` (workers/worker.py:716-802): ``BatchIterator`` micro-batches, ``forward_backward`` (:625-710: ``HFModelWrapper.forward`` at the sampling temperature, the registered policy loss, the KL loss ``compute_approx_kl`` + ``masked_mean(..., dim=-1).mean()``, ``loss / accumulation_steps``, ``strategy.backward``) |

Stubs (declared in ``shims``): the distributed strategy (``backward`` is ``loss.backward()``,
``optimizer_step`` does nothing, ``all_reduce`` is the identity), ``torch.cuda.current_device``
(-> "cpu") and ``torch.distributed.barrier`` (no-op) while the step runs, Ray (no actor groups:
the worker objects are built without ``__init__``), the rollout (``action_log_probs``, the
policy's forward in ``fwd_logprobs_values_reward``, are the batch's ``old_logp``; the sequence
rewards go at each response's last token as ``postprocess_generator_output`` puts them,
trainer.py:700-703).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import sys
import types
from types import SimpleNamespace

import torch

from conformance import Unsupported
from conformance.adapters import support

#: packages skyrl's trainer modules import that a CPU install lacks (only these get stand-ins)
_MISSING_ROOTS = ("datasets", "fastapi", "peft", "flash_attn", "skyrl_gym", "torchdata", "vllm",
                  "sglang", "uvicorn", "wandb", "deepspeed", "liger_kernel", "aiohttp", "httpx")

#: imports skyrl guards with ``try/except ImportError`` and a fallback: left to fail, so that the
#: fallback runs (torch_utils.py:22-27: flash-attn's cross-entropy -> logprobs_from_logits_v2)
_GUARDED = ("flash_attn.ops",)


def _inert(name: str):
    def fail(*args, **kwargs):
        raise NotImplementedError(f"stand-in: {name} is not available to the rlconform adapter")
    return type(name, (), {"__init__": fail, "__class_getitem__": classmethod(lambda cls, item: cls)})


class _StandIn(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        obj = _inert(f"{self.__name__}.{attr}")
        setattr(self, attr, obj)
        return obj


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _MISSING_ROOTS and not name.startswith(_GUARDED):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StandIn(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


@functools.lru_cache(maxsize=None)
def _sk() -> SimpleNamespace:
    """Import skyrl's trainer, worker and model wrapper (real files) with stand-ins for the
    missing packages, then take the stand-ins and skyrl's modules out of ``sys.modules``."""
    import importlib
    from importlib.metadata import distribution
    from pathlib import Path

    from omegaconf import OmegaConf

    before = set(sys.modules)
    finder = _Finder()
    sys.meta_path.append(finder)
    try:
        trainer = importlib.import_module("skyrl_train.trainer")
        worker = importlib.import_module("skyrl_train.workers.worker")
        wrapper = importlib.import_module("skyrl_train.model_wrapper")
        pu = importlib.import_module("skyrl_train.utils.ppo_utils")
        tb = importlib.import_module("skyrl_train.training_batch")
    finally:
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:
            if name.split(".")[0] in _MISSING_ROOTS + ("skyrl_train",):
                del sys.modules[name]
    root = Path(distribution("skyrl-train").locate_file("skyrl_train"))
    base = OmegaConf.load(root / "config" / "ppo_base_config.yaml")
    return SimpleNamespace(trainer=trainer, worker=worker, wrapper=wrapper, pu=pu, tb=tb, base=base,
                           OmegaConf=OmegaConf)


# --- configuration ---------------------------------------------------------------------------------

def _cfg(variant, config: dict, B: int, k: int, n: int, T: int):
    """skyrl's config (ppo_base_config.yaml's trainer.algorithm and generator nodes) with what
    ``config`` says under skyrl's option names; batch sizes so that ``ppo_train`` cuts ``k``
    micro-batches of ``B / k`` rows and accumulates over all of them."""
    s = _sk()
    O = s.OmegaConf
    alg = O.to_container(s.base.trainer.algorithm, resolve=True)
    gen = O.to_container(s.base.generator, resolve=True)
    algorithm = config["algorithm"]
    estimator = {"grpo": "grpo", "dr_grpo": "grpo", "dapo": "grpo", "rloo": "rloo",
                 "reinforce_pp": "reinforce++"}[algorithm]
    clip_high = config["clip_low"] if config["clip_high"] is None else config["clip_high"]
    alg.update(
        advantage_estimator=estimator,
        grpo_norm_by_std=config["scale"] == "group",
        policy_loss_type="regular" if config["dual_clip"] is None else "dual_clip",
        eps_clip_low=float(config["clip_low"]), eps_clip_high=float(clip_high),
        loss_reduction=variant._mode(),
        max_seq_len=T if config["norm_len"] is None else int(config["norm_len"]),
        use_kl_loss=config["kl_in"] == "loss", use_kl_in_reward=config["kl_in"] == "reward",
        kl_loss_coef=float(config["beta"]), kl_estimator_type=config["kl_kind"],
        gamma=float(config["gamma"]), lambd=float(config["lam"]),
        advantage_batch_normalize=False,        # reinforce++ whitens inside its estimator (ppo_utils.py:939)
        use_entropy_loss=False, use_tis=False,
    )
    if config["dual_clip"] is not None:
        alg["clip_ratio_c"] = float(config["dual_clip"])
    gen["n_samples_per_prompt"] = n
    gen["step_wise_trajectories"] = False
    gen["sampling_params"]["temperature"] = float(config["temperature"])
    gen["sampling_params"]["logprobs"] = None
    trainer = {"algorithm": alg, "micro_train_batch_size_per_gpu": B // k,
               "micro_forward_batch_size_per_gpu": B, "policy_mini_batch_size": B // n,
               "update_epochs_per_batch": 1, "placement": {"colocate_policy_ref": True}}
    return O.create({"trainer": trainer, "generator": gen})


class _Strategy:
    """Stands in for skyrl's ``DistributedStrategy`` (distributed/strategy.py): one process;
    ``backward`` is ``loss.backward()`` (the FSDP strategy's, fsdp_strategy.py), the optimizer
    step does nothing."""

    def __init__(self):
        self.losses: list[float] = []

    def backward(self, loss, model, optimizer, **kwargs):
        loss.backward()
        self.losses.append(float(loss.detach()))

    def optimizer_step(self, *args, **kwargs):
        return None

    def all_reduce(self, x, *args, **kwargs):
        return x

    def is_rank_0(self):
        return True


@contextlib.contextmanager
def _cpu():
    """``torch.cuda.current_device`` -> "cpu" and ``torch.distributed.barrier`` -> no-op while
    the workers run (forward_backward and the reference's _forward_micro_batch move their
    micro-batch to the current CUDA device, worker.py:630, :1079; ppo_train ends with a barrier,
    :792)."""
    saved = torch.cuda.current_device, torch.distributed.barrier
    torch.cuda.current_device = lambda: "cpu"
    torch.distributed.barrier = lambda *a, **k: None
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # autocast(device_type="cuda") on a CPU build
            yield
    finally:
        torch.cuda.current_device, torch.distributed.barrier = saved


def _groups(group_ids) -> tuple[list, int]:
    ids = [int(g) for g in group_ids]
    sizes = {g: ids.count(g) for g in ids}
    n = max(sizes.values())
    return [str(g) for g in ids], n


def online_step(variant, model, ref_model, batch: dict, config: dict) -> dict:
    algorithm = config["algorithm"]
    if algorithm not in support.honoured(variant, "algorithms"):
        raise Unsupported(f"{variant.name}'s train_step does not implement {algorithm!r}")
    if config["agg"] not in support.honoured(variant, "agg", algorithm):
        raise Unsupported(f"{variant.name} reduces its policy loss as {variant._mode()} only "
                          "(trainer.algorithm.loss_reduction, ppo_utils.py:881-905)")
    if algorithm in ("grpo", "dr_grpo", "dapo") and config["scale"] not in ("group", "none"):
        raise Unsupported("grpo_norm_by_std is a bool: group std or none (ppo_utils.py:1035)")
    if config["kl_in"] not in support.honoured(variant, "kl_in", algorithm):
        raise Unsupported(f"{variant.name} does not put the KL in the {config['kl_in']} for {algorithm}")
    s = _sk()
    k = config["grad_accum"]
    B, P = batch["prompt_ids"].shape
    T = batch["completion_ids"].shape[1]
    if not isinstance(k, int) or k < 1 or B % k:
        raise ValueError(f"grad_accum must be a positive int dividing the batch size {B}, got {k!r}")
    uids, n = _groups(batch["group_ids"])
    if algorithm == "reinforce_pp":
        n = 1
    if B % n:
        raise Unsupported("skyrl's policy_mini_batch_size counts prompts of n samples each")
    cfg = _cfg(variant, config, B, k, n, T)
    named = dict(model.named_parameters())
    modes = [(m, m.training) for m in (model, ref_model)]
    for p in named.values():
        p.grad = None
    try:
        with _cpu():
            policy = s.wrapper.HFModelWrapper(model)
            reference = s.wrapper.HFModelWrapper(ref_model)
            reference.eval()
            # the training input as convert_to_training_input lays it out (trainer.py:558-612)
            sequences = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
            attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1).long()
            response_mask = batch["completion_mask"].long()
            loss_mask = batch["completion_mask"].float()
            rewards = torch.zeros(B, T)
            last = response_mask.sum(-1) - 1
            rewards[torch.arange(B), last] = batch["scores"].float()     # trainer.py:700-703
            data = s.tb.TrainingInputBatch({
                "sequences": sequences, "attention_mask": attention_mask,
                "response_mask": response_mask, "rewards": rewards, "loss_mask": loss_mask,
                "rollout_logprobs": None, "is_last_step": None})
            data.metadata = {"uids": uids, "response_length": T, "avg_response_length": 0.0,
                             "global_step": 1}
            # fwd_logprobs_values_reward (trainer.py:876-998): the reference worker's forward; the
            # policy's forward is the rollout's old log-probs
            ref_worker = s.worker.RefWorkerBase.__new__(s.worker.RefWorkerBase)
            ref_worker.cfg, ref_worker.model = cfg, reference
            fwd = data.select(keys=["sequences", "attention_mask"], metadata_keys=["response_length"])
            data["base_action_log_probs"] = ref_worker.forward(fwd)["output"]
            data["action_log_probs"] = batch["old_logp"].float().clone()
            data["values"] = None
            host = SimpleNamespace(cfg=cfg, all_metrics={}, reward_kl_controller=None)
            if cfg.trainer.algorithm.use_kl_in_reward:
                data = s.trainer.RayPPOTrainer.apply_reward_kl_penalty(host, data)
            data = s.trainer.RayPPOTrainer.compute_advantages_and_returns(host, data)
            data.pop("rewards")
            data.metadata.pop("uids")
            if cfg.trainer.algorithm.advantage_batch_normalize:
                data = s.pu.normalize_advantages_dict(data)
            # the policy worker (worker.py:602-806), built without Ray's actor __init__
            worker = s.worker.PolicyWorkerBase.__new__(s.worker.PolicyWorkerBase)
            worker.cfg = cfg
            worker.model = policy
            worker.strategy = _Strategy()
            worker.optimizer = None
            worker.scheduler = SimpleNamespace(get_last_lr=lambda: [0.0])
            worker.record_memory = False
            worker.policy_loss_fn = s.pu.PolicyLossRegistry.get(cfg.trainer.algorithm.policy_loss_type)
            worker.mesh_rank = SimpleNamespace(dp_size=1)
            worker._normalize_mini_batch_size()
            worker.ppo_train(data)
            loss = sum(worker.strategy.losses)
        grads = {}
        for name, p in named.items():
            grads[name] = None if p.grad is None else p.grad.detach().clone()
            p.grad = None
        return {"loss": float(loss), "grads": grads}
    except BaseException:
        for p in named.values():
            p.grad = None
        raise
    finally:
        for m, training in modes:
            m.train(training)
