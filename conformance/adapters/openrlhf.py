"""OpenRLHF 0.11.2 adapters: the framework's own estimator code behind the canonical contract.

OpenRLHF cannot be imported whole on a CPU (its package ``__init__`` pulls deepspeed, ray,
flash-attn and vllm). As OpenRLHF's own tests shipped in the wheel do
(``tests/test_kl_estimator_gradient.py``, ``tests/test_loss_aggregation.py``,
``tests/test_reward_shaping.py``), the three files that hold the math are loaded by file path,
lazily on first use, with empty stand-ins for ``deepspeed`` and ``ray`` registered only while they
load (and restored afterwards); nothing that imports vllm is executed:

- ``openrlhf/models/utils.py``: ``compute_approx_kl``, ``compute_reward``, ``log_probs_from_logits``
- ``openrlhf/models/loss.py``: ``aggregate_loss``, ``PolicyLoss``, ``ValueLoss``, ``PairWiseLoss``,
  ``LogExpLoss``, ``DPOLoss``
- ``openrlhf/trainer/ppo_utils/experience_maker.py``: ``RemoteExperienceMaker`` (GAE, cumulative
  returns, and the group baselines and whitening inside ``compute_advantages_and_returns``)

plus ``openrlhf/utils/loss_utils.py`` (``get_loss_batch_info``, the normalisers the PPO actor and
critic pass to every loss), ``openrlhf/trainer/ppo_utils/experience.py`` (the real ``Experience``)
and ``openrlhf/trainer/ppo_utils/length_penalty.py``, which ``experience_maker.py`` imports.

Variants (docs/contract.md, "Variants"); the switch is ``--algo.advantage.estimator``,
``--actor.policy_loss_type`` or ``--model.loss_type`` (reward model):

- ``openrlhf``: OpenRLHF's defaults (``estimator=gae`` with batch whitening, ``policy_loss_type=ppo``,
  pairwise sigmoid reward loss). No group estimator: ``gae`` does not use one.
- ``openrlhf-group_norm`` / ``openrlhf-dr_grpo`` / ``openrlhf-rloo``: the group baselines
  (``scale="group"``, ``scale="none"``, leave-one-out); these estimators do not whiten.
- ``openrlhf-gspo``: ``policy_loss_type=gspo`` (sequence-level ratio, sequence-level loss).
- ``openrlhf-logexp``: the reward model's ``loss_type`` other than ``sigmoid`` (``LogExpLoss``).

The PPO loss aggregation (``--actor.loss_agg_mode``: ``token-mean`` or ``seq-mean-token-mean``),
the clip range (``--actor.eps_clip_low_high``), ``--actor.dual_clip``, the value clip, the KL
estimator and the DPO/IPO coefficients are options of the canonical functions themselves, so every
variant honours them as OpenRLHF's trainer does (no separate variant is needed for them). What
OpenRLHF has no setting for is declared in ``capabilities``: the critic's ``ValueLoss`` is always
token-mean (``"value_loss.agg"``), gspo's loss always sequence-level (``"ppo_clip_loss.agg"``),
the whitening eps a literal, and the group estimators take groups of one size and one scale.

Outputs come back uncast, as OpenRLHF produces them (``compute_approx_kl`` and the experience
maker work in float32). No adapter step changes values: no shim (docs/contract.md, "What an adapter
may and may not do"); ``compute_approx_kl`` takes no mask and nothing masks its output right after
the call in OpenRLHF's trainer, so the adapter does not either.

Framework defaults are read at run time from the argparse definitions of OpenRLHF's own entry
points (``openrlhf/cli/train_ppo_ray.py``, ``train_dpo.py``, ``train_rm.py``: the parsers are built
under ``if __name__ == "__main__"``, so their ``add_argument`` calls are read with ``ast``).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch

from conformance import Unsupported
from conformance.adapters import pins, support

VERSION = pins.PINS["openrlhf"]
PKG = pins.label("openrlhf")
#: the contract's aggregation modes -> PolicyLoss/aggregate_loss's token_level_loss
#: (--actor.loss_agg_mode, cli/train_ppo_ray.py:441-448; models/loss.py:11-39)
TOKEN_LEVEL = {"token-mean": True, "seq-mean-token-mean": False}
_PRIVATE = "_rlconform_openrlhf"


# --- loading ---------------------------------------------------------------------------------------

def _root() -> Path:
    spec = importlib.util.find_spec("openrlhf")        # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"openrlhf is not installed: pip install --no-deps {pins.requirement('openrlhf')} "
                          "(see conformance/adapters/openrlhf_install.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stand_in(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def _zero_pad_sequences(*args, **kwargs):
    raise NotImplementedError("stand-in: openrlhf.utils.utils is not loaded by the rlconform adapter")


@functools.lru_cache(maxsize=None)
def _fw() -> SimpleNamespace:
    """Load OpenRLHF's math files by path (once). Stand-ins for ``deepspeed``, ``ray`` and the
    OpenRLHF modules these files import are in ``sys.modules`` only while the files load."""
    root = _root()
    models = root / "models"
    pkg = types.ModuleType(f"{_PRIVATE}_models")         # so that loss.py's `from .utils` resolves
    pkg.__path__ = [str(models)]
    launcher = _stand_in("openrlhf.trainer.ray.launcher", RayActorGroup=type("RayActorGroup", (), {}))
    logging_utils = _stand_in("openrlhf.utils.logging_utils", init_logger=logging.getLogger)
    temporary = {
        "deepspeed": _stand_in("deepspeed"),
        "ray": _stand_in("ray"),
        "openrlhf.trainer.ray.launcher": launcher,
        "openrlhf.utils.logging_utils": logging_utils,
        "openrlhf.utils.utils": _stand_in("openrlhf.utils.utils", zero_pad_sequences=_zero_pad_sequences),
    }
    saved = {k: sys.modules.get(k) for k in list(temporary) + [
        "openrlhf.models.utils", "openrlhf.trainer.ppo_utils.experience",
        "openrlhf.trainer.ppo_utils.length_penalty", "openrlhf.utils.seqlen_balancing"]}
    try:
        sys.modules.update(temporary)
        sys.modules[pkg.__name__] = pkg
        utils = _load(f"{pkg.__name__}.utils", models / "utils.py")
        loss = _load(f"{pkg.__name__}.loss", models / "loss.py")
        loss_utils = _load(f"{_PRIVATE}_loss_utils", root / "utils" / "loss_utils.py")
        sys.modules["openrlhf.models.utils"] = utils
        sys.modules["openrlhf.utils.seqlen_balancing"] = _load(
            f"{_PRIVATE}_seqlen_balancing", root / "utils" / "seqlen_balancing.py")
        ppo_utils = root / "trainer" / "ppo_utils"
        experience = _load(f"{_PRIVATE}_experience", ppo_utils / "experience.py")
        sys.modules["openrlhf.trainer.ppo_utils.experience"] = experience
        sys.modules["openrlhf.trainer.ppo_utils.length_penalty"] = _load(
            f"{_PRIVATE}_length_penalty", ppo_utils / "length_penalty.py")
        maker = _load(f"{_PRIVATE}_experience_maker", ppo_utils / "experience_maker.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return SimpleNamespace(root=root, utils=utils, loss=loss, loss_utils=loss_utils,
                           Experience=experience.Experience,
                           RemoteExperienceMaker=maker.RemoteExperienceMaker)


@functools.lru_cache(maxsize=None)
def _cli_defaults(script: str) -> dict:
    """``{"--dest": default}`` of every ``parser.add_argument`` in ``openrlhf/cli/<script>``."""
    tree = ast.parse((_root() / "cli" / script).read_text())
    out = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            for kw in node.keywords:
                if kw.arg == "default":
                    try:
                        out[node.args[0].value] = ast.literal_eval(kw.value)
                    except ValueError:
                        pass
    return out


def _ppo_default(flag: str):
    return _cli_defaults("train_ppo_ray.py")[flag]


def _batch_info(mask: torch.Tensor) -> dict:
    # The normalisers the PPO actor and critic pass to every loss (ppo_actor.py:274-280,
    # ppo_critic.py:133-138; one process: dp_size 1, the micro-batch's token and sequence counts).
    return _fw().loss_utils.get_loss_batch_info(None, mask)


def _as_mask(mask: torch.Tensor) -> torch.Tensor:
    # OpenRLHF's action_mask is a bool tensor (experience.py:43): a mask-type convention.
    return mask.to(torch.bool)


def _maker(estimator: str, n: int, kl_coef: float = 0.0, **advantage):
    """A ``RemoteExperienceMaker`` made by ``__new__`` with only what
    ``compute_advantages_and_returns`` reads: the estimator, the KL controller's value and
    ``strategy.args`` (rollout group size, reward clip range, advantage settings), as OpenRLHF's
    tests/test_reward_shaping.py builds it. Every other setting keeps the CLI default."""
    fw = _fw()
    maker = fw.RemoteExperienceMaker.__new__(fw.RemoteExperienceMaker)
    maker.advantage_estimator = estimator
    maker.kl_ctl = SimpleNamespace(value=kl_coef)
    adv = dict(estimator=estimator, gamma=float(_ppo_default("--algo.advantage.gamma")),
               lambd=float(_ppo_default("--algo.advantage.lambd")),
               no_std_norm=_ppo_default("--algo.advantage.no_std_norm"))
    adv.update(advantage)
    args = SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=n),
        reward=SimpleNamespace(clip_range=tuple(_ppo_default("--reward.clip_range"))),
        algo=SimpleNamespace(advantage=SimpleNamespace(**adv)))
    maker.strategy = SimpleNamespace(args=args)
    maker.args = args
    return maker


def _pad_id(config: dict, model) -> int:
    """The tokenizer's pad id, as OpenRLHF's trainers read it (``get_tokenizer``: AutoTokenizer
    at the model path)."""
    path = config.get("model_path")
    if path:
        from transformers import AutoTokenizer
        pad = AutoTokenizer.from_pretrained(str(path), local_files_only=True).pad_token_id
        if pad is not None:
            return pad
    return model.config.pad_token_id


def _group_slots(group_ids: torch.Tensor):
    """OpenRLHF's trainer produces ``n_samples_per_prompt`` consecutive responses per prompt and
    records each one's place in ``Experience.index``; ``compute_advantages_and_returns`` scatters
    the rewards by that index and reshapes them to ``(-1, n_samples_per_prompt)``
    (experience_maker.py:251-256). Give each sample the slot of its place in the contiguous
    layout of its group."""
    order, n = support.contiguous_groups(
        group_ids, "OpenRLHF's trainer always produces n_samples_per_prompt responses per prompt "
        "and reshapes the rewards to (-1, n_samples_per_prompt) "
        f"(trainer/ppo_utils/experience_maker.py:256, {PKG})")
    if n == 1:
        raise Unsupported("groups of one: OpenRLHF's CLI requires n_samples_per_prompt > 1 for the "
                          f"group estimators (cli/train_ppo_ray.py:656-659, {PKG})")
    return support.slots(order), n


def _group_advantages(estimator: str, scores: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Scores through ``compute_advantages_and_returns`` with one-token responses and no KL (the KL
    tensor is float32, as ``compute_approx_kl`` returns it, experience_maker.py:206); the advantage
    of the one token is the sample's advantage, in the dtype OpenRLHF produces (uncast)."""
    fw = _fw()
    slots, n = _group_slots(group_ids)
    B = scores.shape[0]
    experience = fw.Experience(index=slots, rewards=scores, action_mask=torch.ones(B, 1, dtype=torch.bool),
                               kl=torch.zeros(B, 1, dtype=torch.float32), info={})
    out = _maker(estimator, n).compute_advantages_and_returns([experience])[0].advantages
    return out[:, 0]


# --- the adapters ----------------------------------------------------------------------------------

def _defaults(advantage_estimator: str, policy_loss_type: str = "ppo", rm_loss: str | None = None) -> dict:
    """Framework defaults, read from OpenRLHF's entry points at run time (None: no such setting)."""
    ppo, dpo, rm = (_cli_defaults(s) for s in ("train_ppo_ray.py", "train_dpo.py", "train_rm.py"))
    low_high = ppo["--actor.eps_clip_low_high"] or (ppo["--actor.eps_clip"],) * 2   # train_ppo_ray.py:633-634
    return {
        "advantage_estimator": advantage_estimator if advantage_estimator else ppo["--algo.advantage.estimator"],
        "loss_type": policy_loss_type,                  # --actor.policy_loss_type
        "clip_low": low_high[0],
        "clip_high": low_high[1],
        "dual_clip": ppo["--actor.dual_clip"],
        "value_clip": ppo["--critic.value_clip"],
        "kl_beta": ppo["--algo.kl.init_coef"],
        "kl_estimator": ppo["--algo.kl.estimator"],
        "kl_in": "loss" if ppo["--algo.kl.use_loss"] else "reward",
        "gae_lambda": ppo["--algo.advantage.lambd"],
        "gamma": ppo["--algo.advantage.gamma"],
        "group_size": ppo["--rollout.n_samples_per_prompt"],
        "loss_agg": ppo["--actor.loss_agg_mode"],
        "adv_eps": None,       # not a setting: literals in experience_maker.py:274 and :333
        "whiten_advantages": not ppo["--algo.advantage.no_std_norm"],
        "reward_clip_range": list(ppo["--reward.clip_range"]),
        "dpo_beta": dpo["--model.beta"],
        "dpo_label_smoothing": dpo["--model.label_smoothing"],
        "rm_loss_type": rm_loss or rm["--model.loss_type"],
    }


_at = support.citer("openrlhf")
_EM = "openrlhf/trainer/ppo_utils/experience_maker.py"


def _cite(where: str, what: str) -> str:
    return f"{what} ({_at(where)})"


def _one_pair(module: str, line: str) -> str:
    return _cite(f"openrlhf/models/loss.py:{line}",
                 f"one pair per call: {module} returns the batch mean (loss.mean()), so how it weighs "
                 "the pairs of a batch cannot show, only each pair's own loss")


#: compute_approx_kl's float32 cast: its result is float32 for float64 input (kl_estimate/dtype-kept)
#: and mixed float dtypes are accepted (one cause, one sentence)
KL_FLOAT32 = _cite(
    "openrlhf/models/utils.py:93",
    "casts both log-prob tensors to float32 (log_probs.float() - log_probs_base.float()), so it "
    "computes and returns float32 for float64 input and accepts mixed float dtypes")
#: compute_reward's cast of the scores to the KL's dtype, float32 (kl_penalized_rewards and the
#: group estimators, whose advantages pass through compute_reward)
REWARD_FLOAT32 = _cite(
    "openrlhf/models/utils.py:155",
    "compute_reward writes the scores into zeros_like(kl) with r.to(kl.dtype), and kl is "
    "compute_approx_kl's float32 (utils.py:93), so float64 scores come back as float32 rewards "
    "and advantages, rounded to float32")
#: the clamp of every compute_approx_kl estimate (kl_estimate/large-log-ratios, and beyond +-20)
KL_CLAMP = support.clamps(
    "every estimate of compute_approx_kl (and k3's log-ratio below at -10)", "[-10, 10]",
    _at("openrlhf/models/utils.py", "108-113"), "at l = 8, k2 gives 10 instead of 32")
#: PolicyLoss's clamp of the log-ratio (policy_loss_type ppo only; gspo does not clamp)
PPO_LOG_RATIO_CLAMP = support.clamps(
    "the log-ratio of PolicyLoss (policy_loss_type ppo) before exp", "[-20, 20]",
    _at("openrlhf/models/loss.py", "187-188"),
    "where the policies drifted apart the ratio stops at e^20 and the token's gradient is 0: at "
    "a log-ratio of 25 with advantage -0.5 the token's loss is 2.42583e+08 instead of "
    "3.60024e+10, with gradient 0 instead of 3.60024e+10")
#: group_norm's literal eps
GROUP_NORM_EPS = _cite(
    f"{_EM}:274",
    "divides by the group std + 1e-9, a literal 1000 times smaller than the contract's eps "
    "(1e-6), so the advantages of a group with a small std come out larger, and in an all-equal "
    "float32 group (std 0) the rounding residue of the mean, divided by 1e-9, becomes a large "
    "advantage: 7 float32 rewards of 0.1 get -7.45058 each instead of 0 (larger residues reach "
    "the reward clip at +-10, utils.py:142, --reward.clip_range)")


#: passes that hold only because the adapter shapes the input so OpenRLHF's behaviour cannot show
_PREF = support.PREFERENCE_VALUE_CHECKS
QUALIFIED = {
    **support.qualify(_one_pair("DPOLoss", "360"), "dpo_loss", *_PREF["dpo_loss"]),
    **support.qualify(_one_pair("DPOLoss(ipo=True)", "360"), "ipo_loss", *_PREF["ipo_loss"]),
    **support.qualify(_one_pair("PairWiseLoss", "313"), "bradley_terry_loss",
                      *_PREF["bradley_terry_loss"]),
}


# --- training steps: declarations (conformance/adapters/openrlhf_train.py runs the steps) ----------

_PA = "openrlhf/trainer/ray/ppo_actor.py"
#: the KL loss is a token mean whatever --actor.loss_agg_mode says
TRAIN_KL_TOKEN_MEAN = _cite(
    f"{_PA}:331",
    "the KL loss is aggregate_loss(kl, action_mask, **loss_batch_info) without token_level_loss, "
    "so it is a token mean whatever --actor.loss_agg_mode says: under seq-mean-token-mean the "
    "policy loss is a mean of sequence means but its KL term a token mean (grpo, beta 0.04, "
    "gpt2: gradient off by 5.7e-03 relative L2)")
#: group estimators with the KL in the reward
TRAIN_KL_IN_REWARD_GROUP = _cite(
    f"{_EM}:268-290,312-317",
    "with the KL in the reward (--algo.kl.use_loss off) the group baseline is taken on the "
    "scores alone, then compute_reward adds -beta * KL at every token (utils.py:144) and "
    "get_cumulative_returns sums it from each token to the end, so token t's advantage is "
    "A(scores) - beta * sum_{l >= t} kl_l, not the group statistics of "
    "scores - beta * sum_t kl_t (grpo, k1, beta 0.1, gpt2: gradient off by 7.9e-02 relative L2)")
#: the whitening of reinforce and gae
TRAIN_BIASED_WHITENING = _cite(
    f"{_EM}:325-338",
    "whitens the advantages with the biased variance (divisor: the number of real tokens) "
    "clamped at 1e-8, not the unbiased variance + eps, so every advantage is sqrt(N / (N - 1)) "
    "times the recipe's: 0.94% larger with the 54 real tokens of the check's batch")
#: the critic has its own optimizer and no vf_coef
TRAIN_NO_VF_COEF = _cite(
    "openrlhf/trainer/ray/ppo_critic.py:148-163",
    "the critic is a separate model trained by its own optimizer on ValueLoss alone: there is no "
    "vf_coef, so the value model's gradient is 1/vf_coef times the recipe's (twice at vf_coef "
    "0.5); the loss returned is the actor's plus the critic's, and the actor's advantages are "
    "whitened with the biased variance (experience_maker.py:330-333)")
#: NaN at padded old log-probs
TRAIN_NAN_POLICY_LOSS = _cite(
    "openrlhf/models/loss.py:185-212,32",
    "PolicyLoss computes the per-token loss at padded positions from the old log-probs and "
    "aggregate_loss masks it by multiplication, so NaN there makes the loss and every gradient "
    "NaN (OpenRLHF's own old log-probs are Actor.forward's times the action mask, actor.py:298, "
    "finite at padding)")
TRAIN_NAN_REWARD = _cite(
    f"{_EM}:205-210,284-317",
    "the old log-probs enter compute_approx_kl for the reward's KL and compute_reward / "
    "get_cumulative_returns mask by multiplication (utils.py:144, experience_maker.py:413-414), "
    "and PolicyLoss masks its per-token loss by multiplication (loss.py:32): NaN at padded "
    "old log-probs makes the loss NaN")


_TRAIN_ALGORITHMS = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo", "dpo", "ipo", "reward_model")


def _function_level(declared: dict) -> dict:
    """``declared`` without the training-step declarations (keys ``<algorithm>/...``)."""
    return {k: v for k, v in declared.items() if k.split("/", 1)[0] not in _TRAIN_ALGORITHMS}


_TT = "conformance/adapters/openrlhf_train.py"
#: what replaces OpenRLHF's distributed machinery, rollout and data loading in train_step
TRAIN_SHIMS = {
    "train_step": _cite(
        "openrlhf/utils/loss_utils.py:60-65",
        "DeepSpeed's engine is replaced by a strategy whose backward runs "
        "(loss / gradient_accumulation_steps).backward(), the 1/gas DeepSpeed applies to every "
        "backward loss (which iter_grad_accum_global_norm pre-compensates), and whose "
        "optimizer_step does nothing; the model runs as given (float32, its own attention; "
        "OpenRLHF's defaults are bf16 and flash_attention_2)"),
    "train_step (rollout)": _cite(
        f"{_PA}:618-644",
        "the rollout is the batch: the actor's and critic's rollout-time forwards "
        "(PolicyModelActor.forward, CriticModelActor.forward), which make_experience dispatches "
        "through Ray, return the batch's old_logp and old_values; the reference model's forward "
        "runs OpenRLHF's Actor.forward (launcher.py:128-152), created only when the KL "
        "coefficient is > 0 (cli/train_ppo_ray.py:42)"),
    "train_step (layout)": _cite(
        "openrlhf/models/actor.py:262-263,298",
        "the contract's layout (prompts left-padded, completions right-padded, action_mask the "
        "completion mask) goes to Actor.forward as is; OpenRLHF's rollout concatenates each "
        "unpadded prompt and response and right-pads the batch (samples_generator.py:253-263, "
        "experience.py:113), which Actor.forward's position ids cumsum(mask) - 1 and last-T "
        "slice make equivalent"),
    "train_step (micro-batches)": _cite(
        f"{_PA}:158-193",
        "the replay buffer and its shuffled DataLoader are replaced by the contract's contiguous "
        "micro-batches of B / grad_accum rows, paired with iter_grad_accum_global_norm's "
        "normalisers as ppo_train pairs them"),
    "train_step (Actor)": _cite(
        "openrlhf/models/actor.py:218-219,236",
        "Actor(model) wraps the given model; that branch of __init__ does not set "
        "packing_samples, which forward reads: it is set to the CLI default, False (packing "
        "needs flash-attn's varlen kernels, ring_attn_utils.py:3)"),
    "train_step (dpo)": _cite(
        "openrlhf/trainer/dpo_trainer.py:152-181",
        "the body of DPOTrainer.fit's loop runs per micro-batch (its dataloader, logging and "
        "checkpointing do not); the pairs are laid out as OpenRLHF's reward dataset makes them: "
        "prompt and completion unpadded, right-padded, with the prompt's length "
        "(datasets/reward_dataset.py:121-131,179-199)"),
}


def _train_deviations(algorithms, kl_in_reward_group=False, biased=False) -> dict:
    out = {}
    for a in algorithms:
        if a in ("dpo", "ipo"):
            continue
        out[f"{a}/nan-old-logp-ignored"] = (TRAIN_NAN_REWARD if a in ("rloo", "reinforce_pp", "ppo")
                                            else TRAIN_NAN_POLICY_LOSS)
        if kl_in_reward_group:
            out[f"{a}/kl-in-reward"] = TRAIN_KL_IN_REWARD_GROUP
    return out


def _train_capabilities(algorithms, **extra) -> dict:
    """What ``train_step`` honours per algorithm: the two loss_agg_modes (no length normaliser),
    the KL where OpenRLHF can put it (``--algo.kl.use_loss``), the estimators' literal eps."""
    caps = {"algorithms": list(algorithms)}
    for a in algorithms:
        if a in ("dpo", "ipo"):
            continue
        caps[f"{a}.agg"] = list(TOKEN_LEVEL)
        caps[f"{a}.norm_len"] = False
        caps[f"{a}.kl_in"] = ["reward"] if a in ("reinforce_pp", "ppo") else ["loss", "reward"]
        if a in ("grpo", "dapo", "reinforce_pp", "ppo"):
            caps[f"{a}.eps"] = False          # literals: experience_maker.py:274 (1e-9), :333 (1e-8)
    caps.update(extra)
    return caps


class OpenRLHF:
    """OpenRLHF's defaults: ``--algo.advantage.estimator gae`` (with batch whitening),
    ``--actor.policy_loss_type ppo``, ``--model.loss_type sigmoid`` for the reward model."""

    name = "openrlhf"
    framework = pins.framework("openrlhf")
    #: the two --actor.loss_agg_mode values; the critic's ValueLoss is always token-mean
    #: (ppo_critic.py:60); the whitening eps is the literal 1e-8 (experience_maker.py:333)
    capabilities = {"agg": list(TOKEN_LEVEL), "value_loss.agg": ["token-mean"],
                    "batch_normalized_advantages.eps": False,
                    **_train_capabilities(("ppo", "dpo", "ipo"))}
    estimator = "gae"
    scale = None
    policy_loss_type = "ppo"
    qualified = QUALIFIED
    #: where OpenRLHF tracks a declared deviation (the pull request about the clamp of k3's
    #: log-ratio inside compute_approx_kl)
    upstream = {"kl_estimate/large-log-ratios": "https://github.com/OpenRLHF/OpenRLHF/pull/1160"}
    known_deviations = {
        # KL
        "kl_estimate/padding-*": _cite(
            "openrlhf/models/utils.py:69-113",
            "compute_approx_kl takes no mask and computes every entry, so padded entries are not 0 "
            "and NaN/inf padding reaches the output"),
        "kl_estimate/large-log-ratios": KL_CLAMP,
        "kl_estimate/log-ratios-beyond-20": KL_CLAMP,
        "kl_estimate/rejects-mixed-float-dtypes": KL_FLOAT32,
        "kl_estimate/dtype-kept": KL_FLOAT32,
        "kl_estimate/matches-reference": _cite(
            "openrlhf/models/utils.py:69-113",
            "compute_approx_kl takes no mask: padded entries hold the estimate of whatever stands "
            "there, not 0 (real entries agree to float32 precision: it computes in float32)"),
        "kl_estimate/gradient-matches-reference": _cite(
            "openrlhf/models/utils.py:69-113",
            "compute_approx_kl takes no mask: the gradient at padded entries is not 0"),
        "kl_penalized_rewards/padding-*": _cite(
            "openrlhf/models/utils.py:144",
            "compute_reward adds -kl_coef * kl at every position, padded ones included, so padded "
            "entries are not 0"),
        "kl_penalized_rewards/matches-reference": _cite(
            "openrlhf/models/utils.py:144",
            "compute_reward adds -kl_coef * kl at padded positions too, so they are not 0 (real "
            "entries agree to float32 precision)"),
        "kl_penalized_rewards/gradient-matches-reference": _cite(
            "openrlhf/models/utils.py:144",
            "compute_reward adds -kl_coef * kl at padded positions too: the gradient there is not 0"),
        "kl_penalized_rewards/dtype-kept": REWARD_FLOAT32,
        "kl_penalized_rewards/rejects-negative-beta": _cite(
            "openrlhf/models/utils.py:138-139",
            "compute_reward replaces a negative kl_coef by 0 (if kl_coef <= 0.0: kl_coef = 0.0): a "
            "negative beta is run as beta = 0, without the KL penalty and without an error"),
        "kl_penalized_rewards/rejects-row-without-real-token": _cite(
            "openrlhf/models/utils.py:154",
            "a row without real tokens gets its score at the last padded position (argmax of an "
            "all-zero row), no error"),
        # losses
        "aggregate/padding-nan": _cite(
            "openrlhf/models/loss.py:32", "masks by multiplying (loss * loss_mask), so NaN padding gives NaN"),
        "aggregate/padding-inf": _cite(
            "openrlhf/models/loss.py:32", "masks by multiplying (loss * loss_mask), so inf padding gives NaN"),
        "aggregate/rejects-mask-with-hole": _cite(
            "openrlhf/models/loss.py:29-39", "accepts a mask whose real tokens are not a prefix"),
        "ppo_clip_loss/padding-[in]*": _cite(
            "openrlhf/models/loss.py:200-212,32",
            "the per-token loss is computed at padded positions and masked by multiplication, so "
            "NaN/inf padding (and 1e30 advantages overflowing in float32) give NaN"),
        "ppo_clip_loss/log-ratios-beyond-20": PPO_LOG_RATIO_CLAMP,
        "value_loss/padding-nan": _cite(
            "openrlhf/models/loss.py:282-297,32",
            "the squared error is computed at padded positions and masked by multiplication, so NaN "
            "padding gives NaN"),
        "value_loss/padding-inf": _cite(
            "openrlhf/models/loss.py:282-297,32",
            "the squared error is computed at padded positions and masked by multiplication, so inf "
            "padding gives NaN"),
        "value_loss/rejects-shape-mismatch": _cite(
            "openrlhf/models/loss.py:282-288",
            "without a value clip old_values is never read, so its shape is not checked"),
        # returns
        "gae/gradient-matches-reference": support.no_grad(
            "rewards or values", _at(_EM, 342)),
        "gae/padding-nan": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:377-378",
            "masks values and rewards by multiplication (NaN * 0 = NaN), and the recursion carries "
            "NaN back into the real tokens"),
        "gae/padding-inf": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:377-378",
            "masks values and rewards by multiplication (inf * 0 = NaN), and the recursion carries "
            "NaN back into the real tokens"),
        "gae/rejects-lam-outside-unit-interval": support.no_validation("lambd", _at(_EM, "343-387")),
        "gae/rejects-row-without-real-token": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:343-387",
            "accepts a row without real tokens (its advantages are all 0)"),
        "discounted_returns/gradient-matches-reference": support.no_grad(
            "the rewards", _at(_EM, 389)),
        "discounted_returns/padding-nan": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:413-414",
            "masks the rewards by multiplication (NaN * 0 = NaN), and the recursion carries NaN "
            "back into the real tokens"),
        "discounted_returns/padding-inf": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:413-414",
            "masks the rewards by multiplication (inf * 0 = NaN), and the recursion carries NaN "
            "back into the real tokens"),
        "discounted_returns/rejects-gamma-outside-unit-interval": support.no_validation(
            "gamma", _at(_EM, "390-421")),
        "discounted_returns/rejects-integer-rewards": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:409",
            "integer rewards give an integer tensor of truncated returns (returns = zeros_like(rewards)), "
            "no error"),
        # whitening (the gae estimator's normalisation)
        "batch_normalized_advantages/matches-reference": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:332-333",
            "shifts and scales the padded entries too (they are not 0), and whitens the real ones "
            "with the biased variance (divisor: the number of real tokens) clamped at 1e-8, not "
            "the unbiased variance plus eps"),
        "batch_normalized_advantages/padding-*": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:330-338",
            "masks by multiplication (NaN/inf padding gives NaN) and shifts and scales the padded "
            "entries too, so they are not 0"),
        "batch_normalized_advantages/rejects-fewer-than-two-real-entries": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:332-333",
            "one real entry gives variance 0, clamped to 1e-8: returns 0, no error"),
        "batch_normalized_advantages/exact-*": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:332-333",
            "whitens with the biased variance (divisor n, not n - 1)"),
        # preferences
        "dpo_loss/rejects-nonpositive-beta": support.no_validation(
            "beta in DPOLoss", _at("openrlhf/models/loss.py", "334-338")),
        "ipo_loss/rejects-nonpositive-tau": support.no_validation(
            "beta (IPO's tau) in DPOLoss(ipo=True)", _at("openrlhf/models/loss.py", "334-352")),
    }
    known_deviations = {
        **known_deviations,
        **_train_deviations(("ppo",)),
        "ppo/step-matches-recipe-*": TRAIN_NO_VF_COEF,
        "ppo/temperature": TRAIN_NO_VF_COEF,
        "ppo/config-honoured": TRAIN_NO_VF_COEF,
    }
    shims = dict(TRAIN_SHIMS)
    framework_defaults = staticmethod(lambda: _defaults("gae"))

    # --- training steps (conformance/adapters/openrlhf_train.py) ------------------------------------
    def train_step(self, model, ref_model, batch, config):
        """One optimisation step through OpenRLHF's trainers: the PPO actor's (and critic's)
        ``training_step`` for the online algorithms, ``DPOTrainer``'s forward and loss for dpo and
        ipo. Returns ``{"loss", "grads"}``: OpenRLHF runs backward itself."""
        from conformance.adapters import openrlhf_train
        if config["algorithm"] in ("dpo", "ipo"):
            return openrlhf_train.dpo_step(self, model, ref_model, batch, config, _pad_id(config, model))
        return openrlhf_train.online_step(self, model, ref_model, batch, config)

    # --- KL ---------------------------------------------------------------------------------------
    def kl_estimate(self, logp, ref_logp, mask=None, kind="k3"):
        """``compute_approx_kl`` as experience_maker.py:206-210 calls it (no ``log_probs_old``,
        ``unbiased_gradient`` off: the CLI default). It takes no mask and neither the experience
        maker nor the actor masks its output right after the call (the actor's aggregate_loss
        does, as part of the loss), so ``mask`` is unused. Its float32 result comes back uncast."""
        return _fw().utils.compute_approx_kl(logp, ref_logp, kl_estimator=kind)

    def kl_penalized_rewards(self, scores, logp, ref_logp, mask, beta, kind="k1"):
        """``compute_approx_kl`` (experience_maker.py:206-210) then ``compute_reward`` with the KL
        controller's value ``beta`` and the CLI's default reward clip range
        (experience_maker.py:284-290; --reward.clip_range, train_ppo_ray.py:474). The scores are
        promoted to at least float32 first (experience_maker.py:244). The result comes back uncast."""
        fw = _fw()
        kl = fw.utils.compute_approx_kl(logp, ref_logp, kl_estimator=kind)
        r = scores.to(torch.promote_types(scores.dtype, torch.float32))
        return fw.utils.compute_reward(r, beta, kl, action_mask=_as_mask(mask),
                                      reward_clip_range=tuple(_ppo_default("--reward.clip_range")))

    # --- losses -----------------------------------------------------------------------------------
    def aggregate(self, values, mask, mode="token-mean", norm_len=None):
        """``aggregate_loss`` with the PPO trainer's normalisers (ppo_actor.py:331): token-mean
        (``token_level_loss=True``) or seq-mean-token-mean (``False``), the two modes it has."""
        token_level = support.translate(
            self, "agg", mode, TOKEN_LEVEL, "aggregate",
            why=f"aggregate_loss's switch is token_level_loss (openrlhf/models/loss.py:11-39, {PKG})")
        m = _as_mask(mask)
        return _fw().loss.aggregate_loss(values, m, token_level_loss=token_level, **_batch_info(m))

    def _policy_loss(self, agg, clip_low, clip_high, dual_clip):
        token_level = support.translate(
            self, "agg", agg, TOKEN_LEVEL, "ppo_clip_loss",
            why="--actor.loss_agg_mode is token-mean or seq-mean-token-mean "
                f"(openrlhf/cli/train_ppo_ray.py:441-448, {PKG})")
        # as ppo_actor.py:76-86 builds it (importance-sampling correction off: the CLI default)
        return _fw().loss.PolicyLoss(clip_eps_low=clip_low,
                                     clip_eps_high=clip_low if clip_high is None else clip_high,
                                     dual_clip=dual_clip, token_level_loss=token_level,
                                     policy_loss_type=self.policy_loss_type)

    def ppo_clip_loss(self, logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None,
                      dual_clip=None, agg="token-mean", norm_len=None):
        """``PolicyLoss`` built and called as ppo_actor.py:76-86 and :304-311 do. OpenRLHF's
        advantages are (B, T): (B,) advantages are broadcast over the tokens (a shape convention)."""
        loss_fn = self._policy_loss(agg, clip_low, clip_high, dual_clip)
        m = _as_mask(mask)
        return loss_fn(logp, old_logp, support.per_token(advantages, logp), action_mask=m, rollout_log_probs=None,
                       **_batch_info(m))[0]

    def value_loss(self, values, old_values, returns, mask, clip=None, agg="token-mean", norm_len=None):
        """``ValueLoss(value_clip)`` as ppo_critic.py:60 builds it (always token-level) and calls it."""
        support.translate(self, "agg", agg, {"token-mean": None}, "value_loss",
                          why="the critic's ValueLoss is always token-mean "
                              f"(openrlhf/trainer/ray/ppo_critic.py:60, {PKG})")
        m = _as_mask(mask)
        return _fw().loss.ValueLoss(clip)(values, old_values, returns, action_mask=m, **_batch_info(m))

    # --- returns ----------------------------------------------------------------------------------
    def gae(self, rewards, values, mask, gamma=1.0, lam=0.95):
        """``RemoteExperienceMaker.get_advantages_and_returns`` (it does not touch ``self``)."""
        fw = _fw()
        maker = fw.RemoteExperienceMaker.__new__(fw.RemoteExperienceMaker)
        return maker.get_advantages_and_returns(values, rewards, _as_mask(mask), gamma, lam)

    def discounted_returns(self, rewards, mask, gamma=1.0):
        """``RemoteExperienceMaker.get_cumulative_returns`` (it does not touch ``self``)."""
        fw = _fw()
        maker = fw.RemoteExperienceMaker.__new__(fw.RemoteExperienceMaker)
        return maker.get_cumulative_returns(rewards, _as_mask(mask), gamma)

    # --- whitening ----------------------------------------------------------------------------------
    def batch_normalized_advantages(self, advantages, mask=None, eps=1e-8):
        """The whitening block of ``compute_advantages_and_returns`` (experience_maker.py:325-338)
        with ``estimator=gae``. Stub: the maker's ``get_advantages_and_returns`` is replaced on the
        instance by one that hands over the given advantages, so the whitening block is the only
        code that acts on them (rewards 0, KL coefficient 0, one experience)."""
        support.honour(self, "eps", eps, "batch_normalized_advantages", default=1e-8,
                       why="the variance is clamped at the literal 1e-8 "
                           f"(openrlhf/trainer/ppo_utils/experience_maker.py:333, {PKG})")
        fw = _fw()
        shape = advantages.shape
        if advantages.dim() == 1:             # OpenRLHF's advantages are (B, T): (N,) as (N, 1)
            advantages = advantages.unsqueeze(1)
            mask = None if mask is None else mask.unsqueeze(1)
        B = advantages.shape[0]
        m = torch.ones(advantages.shape, dtype=torch.bool) if mask is None else _as_mask(mask)
        maker = _maker(self.estimator, 1, no_std_norm=False)
        maker.get_advantages_and_returns = lambda values, reward, action_mask, gamma, lambd: (advantages, advantages)
        experience = fw.Experience(index=list(range(B)), rewards=torch.zeros(B), action_mask=m,
                                   kl=torch.zeros(advantages.shape, dtype=torch.float32), info={})
        return maker.compute_advantages_and_returns([experience])[0].advantages.reshape(shape)

    # --- preferences --------------------------------------------------------------------------------
    def _rm_loss(self):
        return _fw().loss.PairWiseLoss()             # rm_trainer.py:58-59, --model.loss_type sigmoid

    def bradley_terry_loss(self, chosen_rewards, rejected_rewards, margin=None):
        """The reward model's loss module as rm_trainer.py:58-63 picks it, called as :166; a float
        margin becomes a tensor as rm_trainer.py:157 makes it."""
        loss_fn = self._rm_loss()
        if margin is not None and not isinstance(margin, torch.Tensor):
            margin = torch.tensor(margin, dtype=chosen_rewards.dtype)
        m = (lambda i: None) if margin is None else (
            (lambda i: margin[i:i + 1]) if margin.dim() else (lambda i: margin))
        return support.per_pair(
            lambda i: loss_fn(chosen_rewards[i:i + 1], rejected_rewards[i:i + 1], m(i)),
            chosen_rewards.shape[0], whole=lambda: loss_fn(chosen_rewards, rejected_rewards, margin))

    def _dpo(self, beta, label_smoothing, ipo, pc, pr, rc, rr):
        loss_fn = _fw().loss.DPOLoss(beta, label_smoothing, ipo)      # dpo_trainer.py:64
        return support.per_pair(
            lambda i: loss_fn(pc[i:i + 1], pr[i:i + 1], rc[i:i + 1], rr[i:i + 1])[0], pc.shape[0],
            whole=lambda: loss_fn(pc, pr, rc, rr))

    def dpo_loss(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, beta=0.1, label_smoothing=0.0):
        """``DPOLoss(beta, label_smoothing, ipo=False)`` (dpo_trainer.py:64), one call per pair."""
        return self._dpo(beta, label_smoothing, False, policy_chosen_logps, policy_rejected_logps,
                         ref_chosen_logps, ref_rejected_logps)

    def ipo_loss(self, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, tau=0.1):
        """``DPOLoss(beta=tau, ipo=True)`` (--model.ipo_enable; loss.py:352 uses beta as IPO's tau)."""
        return self._dpo(tau, 0.0, True, policy_chosen_logps, policy_rejected_logps,
                         ref_chosen_logps, ref_rejected_logps)

    # --- log-probabilities ----------------------------------------------------------------------------
    def token_logprobs(self, logits, tokens):
        """``log_probs_from_logits`` as actor.py:289 calls it (temperature 1: no in-place division)."""
        return _fw().utils.log_probs_from_logits(logits, tokens)


class _GroupVariant(OpenRLHF):
    # these estimators do not whiten (experience_maker.py:325)
    batch_normalized_advantages = None
    # groups of one size: the rewards are reshaped to (-1, n_samples_per_prompt) (:256)
    capabilities = {**OpenRLHF.capabilities, "unequal_groups": False}
    known_deviations = {k: v for k, v in _function_level(OpenRLHF.known_deviations).items()
                        if not k.startswith("batch_normalized_advantages/")}
    shims = {
        **TRAIN_SHIMS,
        "group_normalized_advantages": _cite(
            "openrlhf/trainer/ppo_utils/experience_maker.py:251-256,280",
            "gives each sample the Experience.index slot of its group, so that the framework's "
            "own scatter and reshape to (-1, n_samples_per_prompt) puts every group in one row"),
    }

#: the reward clip of compute_reward, applied to the group estimators' advantages
ADVANTAGE_CLIP = _cite(
    f"{_EM}:284-290",
    "passes the group advantages (already baseline-subtracted) to compute_reward as its "
    "rewards, which clamps them to --reward.clip_range, (-10, 10) by default (utils.py:141-142, "
    "train_ppo_ray.py:474): the clip meant for raw rewards cuts the advantages instead, so with "
    "the scores (0, 30, -20) of one group the rloo advantage of 30 is 10 instead of 40")


class OpenRLHFGroupNorm(_GroupVariant):
    """``--algo.advantage.estimator group_norm`` (GRPO): ``scale="group"``."""
    name = "openrlhf-group_norm"
    capabilities = {**_GroupVariant.capabilities, "scale": ["group"],
                    **_train_capabilities(("grpo", "dapo"))}
    estimator = "group_norm"
    scale = "group"
    known_deviations = {**_GroupVariant.known_deviations,
                        **_train_deviations(("grpo", "dapo"), kl_in_reward_group=True),
                        "grpo/step-matches-recipe-*": TRAIN_KL_TOKEN_MEAN,
                        "grpo/kl-term-exact": TRAIN_KL_TOKEN_MEAN,
                        "grpo/temperature": TRAIN_KL_TOKEN_MEAN,
                        # kl_kind k2 with beta 0.1 in the loss: the KL term's token mean shows
                        "grpo/config-honoured": TRAIN_KL_TOKEN_MEAN,
                        "group_normalized_advantages/matches-reference": GROUP_NORM_EPS,
                        "group_normalized_advantages/all-equal-group-gives-zero": GROUP_NORM_EPS,
                        "group_normalized_advantages/dtype-kept": REWARD_FLOAT32}
    framework_defaults = staticmethod(lambda: _defaults("group_norm"))

    def group_normalized_advantages(self, scores, group_ids, scale="group", eps=1e-6):
        """experience_maker.py:273-274; its eps is the literal 1e-9 (``eps`` is not an option
        there: the value the framework uses is what is certified, documented here)."""
        support.translate(self, "scale", scale, {"group": None}, "group_normalized_advantages",
                          why="estimator group_norm divides by the group std "
                              f"(openrlhf/trainer/ppo_utils/experience_maker.py:274, {PKG})")
        return _group_advantages("group_norm", scores, group_ids)


class OpenRLHFDrGrpo(_GroupVariant):
    """``--algo.advantage.estimator dr_grpo``: ``scale="none"``."""
    name = "openrlhf-dr_grpo"
    capabilities = {**_GroupVariant.capabilities, "scale": ["none"],
                    **_train_capabilities(("dr_grpo",))}
    estimator = "dr_grpo"
    scale = "none"
    known_deviations = {**_GroupVariant.known_deviations,
                        **_train_deviations(("dr_grpo",), kl_in_reward_group=True),
                        "group_normalized_advantages/dtype-kept": REWARD_FLOAT32,
                        "group_normalized_advantages/scores-of-any-size": ADVANTAGE_CLIP}
    framework_defaults = staticmethod(lambda: _defaults("dr_grpo"))

    def group_normalized_advantages(self, scores, group_ids, scale="group", eps=1e-6):
        """experience_maker.py:271-272 (group mean subtracted, no division)."""
        support.translate(self, "scale", scale, {"none": None}, "group_normalized_advantages",
                          why="estimator dr_grpo only subtracts the group mean "
                              f"(openrlhf/trainer/ppo_utils/experience_maker.py:271-272, {PKG})")
        return _group_advantages("dr_grpo", scores, group_ids)


class OpenRLHFRloo(_GroupVariant):
    """``--algo.advantage.estimator rloo``: the leave-one-out baseline."""
    name = "openrlhf-rloo"
    capabilities = {**_GroupVariant.capabilities, **_train_capabilities(("rloo",))}
    estimator = "rloo"
    known_deviations = {**_GroupVariant.known_deviations,
                        **_train_deviations(("rloo",), kl_in_reward_group=True),
                        # rloo's recipe puts the KL in the reward by default (refimpl OPTIONS)
                        "rloo/step-matches-recipe-*": TRAIN_KL_IN_REWARD_GROUP,
                        "rloo/temperature": TRAIN_KL_IN_REWARD_GROUP,
                        "rloo/config-honoured": TRAIN_KL_IN_REWARD_GROUP,
                        "leave_one_out_advantages/dtype-kept": REWARD_FLOAT32,
                        "leave_one_out_advantages/scores-of-any-size": ADVANTAGE_CLIP}
    framework_defaults = staticmethod(lambda: _defaults("rloo"))
    shims = {**TRAIN_SHIMS, "leave_one_out_advantages": _GroupVariant.shims["group_normalized_advantages"]}

    def leave_one_out_advantages(self, scores, group_ids):
        """experience_maker.py:268-270."""
        return _group_advantages("rloo", scores, group_ids)


class OpenRLHFGspo(OpenRLHF):
    """``--actor.policy_loss_type gspo``: the sequence-level ratio exp(mean_t log r_t), and a
    sequence-level loss (loss.py:151-152), so only ``agg="seq-mean-token-mean"``."""
    name = "openrlhf-gspo"
    policy_loss_type = "gspo"
    shims: dict = {}                                 # no train_step algorithm
    capabilities = {k: v for k, v in {**OpenRLHF.capabilities,
                                       "ppo_clip_loss.agg": ["seq-mean-token-mean"]}.items()
                    if k != "algorithms" and k.split(".", 1)[0] not in _TRAIN_ALGORITHMS}
    train_step = None                                # gspo is a policy loss no recipe uses
    _gspo = _cite("openrlhf/models/loss.py:189-196",
                  "policy_loss_type gspo clips the sequence-level ratio exp(mean_t log r_t), the "
                  "same for every token of a row, not each token's ratio r_t")
    # gspo exponentiates the sequence-level log-ratio without a clamp (loss.py:189-196)
    known_deviations = {**{k: v for k, v in _function_level(OpenRLHF.known_deviations).items()
                           if k != "ppo_clip_loss/log-ratios-beyond-20"},
                        "ppo_clip_loss/matches-reference": _gspo,
                        "ppo_clip_loss/gradient-matches-reference": _gspo,
                        "ppo_clip_loss/gradient-zero-when-clipped": _gspo}
    framework_defaults = staticmethod(lambda: _defaults("gae", policy_loss_type="gspo"))


class OpenRLHFLogExp(OpenRLHF):
    """The reward model's ``--model.loss_type`` other than ``sigmoid``: ``LogExpLoss``."""
    name = "openrlhf-logexp"
    shims: dict = {}                                 # no train_step algorithm
    capabilities = {k: v for k, v in OpenRLHF.capabilities.items()
                    if k != "algorithms" and k.split(".", 1)[0] not in _TRAIN_ALGORITHMS}
    train_step = None                                # a reward-model loss: no train_step here
    _margin = _cite("openrlhf/models/loss.py:322-326",
                    "LogExpLoss takes a margin argument and ignores it: log(1 + exp(r_r - r_c))")
    _overflow = _cite("openrlhf/models/loss.py:325",
                      "LogExpLoss computes log(1 + exp(r_r - r_c)) as written, and exp overflows: "
                      "at r_r - r_c = 100 in float32 the loss is inf and its gradient NaN, where "
                      "softplus gives 100 and -1")
    known_deviations = {**_function_level(OpenRLHF.known_deviations),
                        "bradley_terry_loss/matches-reference": _margin,
                        "bradley_terry_loss/gradient-matches-reference": _margin,
                        "bradley_terry_loss/gradient-is-sigmoid-minus-one": _margin,
                        "bradley_terry_loss/large-gap-float32": _overflow}
    #: the pull request that replaces LogExpLoss's log(1 + exp(.)) by softplus
    upstream = {**OpenRLHF.upstream,
                "bradley_terry_loss/large-gap-float32": "https://github.com/OpenRLHF/OpenRLHF/pull/1278"}
    qualified = {k: v for k, v in QUALIFIED.items() if not k.startswith("bradley_terry_loss/")}
    framework_defaults = staticmethod(lambda: _defaults("gae", rm_loss="logexp"))

    def _rm_loss(self):
        return _fw().loss.LogExpLoss()               # rm_trainer.py:61-62


class OpenRLHFReinforce(OpenRLHF):
    """``--algo.advantage.estimator reinforce`` (REINFORCE++): the KL in the per-token reward,
    cumulative returns, whitened over the batch (experience_maker.py:312-338)."""
    name = "openrlhf-reinforce"
    estimator = "reinforce"
    capabilities = {**{k: v for k, v in OpenRLHF.capabilities.items()
                       if not k.startswith(("ppo.", "dpo.", "ipo."))},
                    **_train_capabilities(("reinforce_pp",))}
    # the whitening block is the plain variant's (estimator gae runs the same lines :325-338);
    # with estimator reinforce the returns come from get_cumulative_returns, which the plain
    # variant's stub of get_advantages_and_returns does not reach
    batch_normalized_advantages = None
    known_deviations = {**{k: v for k, v in _function_level(OpenRLHF.known_deviations).items()
                           if not k.startswith("batch_normalized_advantages/")},
                        **_train_deviations(("reinforce_pp",)),
                        "reinforce_pp/step-matches-recipe-*": TRAIN_BIASED_WHITENING,
                        "reinforce_pp/temperature": TRAIN_BIASED_WHITENING,
                        "reinforce_pp/config-honoured": TRAIN_BIASED_WHITENING}
    framework_defaults = staticmethod(lambda: _defaults("reinforce"))


openrlhf = OpenRLHF()
openrlhf_group_norm = OpenRLHFGroupNorm()
openrlhf_dr_grpo = OpenRLHFDrGrpo()
openrlhf_rloo = OpenRLHFRloo()
openrlhf_gspo = OpenRLHFGspo()
openrlhf_logexp = OpenRLHFLogExp()
openrlhf_reinforce = OpenRLHFReinforce()

VARIANTS = (openrlhf, openrlhf_group_norm, openrlhf_dr_grpo, openrlhf_rloo, openrlhf_gspo, openrlhf_logexp,
            openrlhf_reinforce)
