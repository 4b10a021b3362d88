"""The contract as data: the names an adapter may import, and the vocabularies the harness reads.

This module is the whole of ``conformance`` that a bundled or foreign adapter needs (besides
the framework-free helpers in ``conformance.adapters.support``): the ``Unsupported`` exception,
the option vocabularies of the canonical functions, the ``capabilities`` an adapter may declare
and the keys of ``framework_defaults``. It imports nothing of the harness. The user-facing text
is ``docs/contract.md`` (shipped as ``conformance/contract.md``); a test keeps the two in
agreement.
"""

from __future__ import annotations

from conformance import Unsupported

CONTRACT_VERSION = "1.1"

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
SCALES = ("group", "batch", "none")
KL_KINDS = ("k1", "k2", "k3")

#: the algorithms of the training-step section (``train_step``/``train_run``; refimpl.recipes)
ALGORITHMS = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo", "dpo", "ipo",
              "reward_model")
#: the keys of a training step's ``config`` (complete on every call)
TRAIN_CONFIG_KEYS = ("algorithm", "beta", "kl_kind", "kl_in", "clip_low", "clip_high",
                     "dual_clip", "scale", "eps", "agg", "norm_len", "gamma", "lam",
                     "label_smoothing", "tau", "vf_coef", "value_clip", "whiten", "grad_accum",
                     "temperature")

#: capability -> (what a variant honours when it declares nothing, what the capability means).
#: List-valued capabilities name the option values honoured; boolean ones whether an option
#: may be set at all (False: only its default, None/0, is honoured).
CAPABILITIES: dict[str, tuple[object, str]] = {
    "agg": (AGG_MODES, "aggregation modes (`agg`/`mode`) of aggregate and the losses"),
    "scale": (SCALES, "`scale` values of group_normalized_advantages"),
    "kl_kind": (KL_KINDS, "`kind` values of kl_estimate and kl_penalized_rewards"),
    "clip_high": (True, "ppo_clip_loss takes a `clip_high` other than `clip_low`"),
    "dual_clip": (True, "ppo_clip_loss takes `dual_clip`"),
    "value_clip": (True, "value_loss takes `clip`"),
    "norm_len": (True, "losses take a `norm_len` other than the padded width"),
    "unequal_groups": (True, "groups of unequal size in one call"),
    "margin": (True, "bradley_terry_loss takes `margin`"),
    "label_smoothing": (True, "dpo_loss takes a nonzero `label_smoothing`"),
    "eps": (True, "an `eps` other than the default in group and batch normalisation"),
    # train_step (docs/contract.md, "Training steps"); narrowed per algorithm as "<algorithm>.agg"
    "algorithms": (ALGORITHMS, "the algorithms `train_step` implements"),
    "kl_in": (("loss", "reward"), "where `train_step` may put the KL (`config[\"kl_in\"]`)"),
    "temperature": (True, "`train_step` takes a `temperature` other than 1"),
}

#: the keys of ``framework_defaults()``: one vocabulary for every framework, so the comparison
#: table lines up. Values are whatever the framework's config classes hold (None: no setting).
DEFAULTS_KEYS: dict[str, str] = {
    "advantage_estimator": "the advantage estimator the default config selects",
    "loss_type": "the framework's loss-type switch (TRL, Liger: loss_type; OpenRLHF, skyrl: "
                 "policy loss type)",
    "loss_agg": "the aggregation mode, in the contract's names",
    "clip_low": "PPO clip epsilon below 1",
    "clip_high": "PPO clip epsilon above 1",
    "dual_clip": "dual-clip constant c (None: off)",
    "dual_clip_if_enabled": "dual-clip constant c used when the dual clip is switched on (skyrl: "
                            "policy_loss_type 'dual_clip')",
    "value_clip": "value clipping epsilon (None: off)",
    "gamma": "discount",
    "gae_lambda": "GAE lambda",
    "group_size": "samples per prompt",
    "grpo_scale": "group advantage scale, in the contract's names (group, batch, none)",
    "adv_eps": "eps of the group std normalisation",
    "whiten_eps": "eps of batch whitening",
    "whiten_advantages": "whether advantages are whitened over the batch",
    "kl_in": "where the KL goes: 'loss', 'reward' or None (no KL)",
    "kl_beta": "KL coefficient where the default config puts the KL",
    "kl_estimator": "KL estimator (k1, k2, k3) where the default config puts the KL",
    "kl_beta_if_in_loss": "KL coefficient used when the KL is a loss term",
    "kl_estimator_if_in_loss": "KL estimator used when the KL is a loss term",
    "kl_beta_if_in_reward": "KL coefficient used when the KL is in the reward",
    "kl_estimator_if_in_reward": "KL estimator used when the KL is in the reward",
    "kl_importance_weighted": "whether the KL term is multiplied by the importance ratio",
    "dpo_beta": "DPO beta",
    "dpo_label_smoothing": "DPO label smoothing",
    "dpo_loss_type": "DPO loss-type switch",
    "rm_loss_type": "reward-model loss",
    "reward_clip_range": "clipping of rewards before the advantage",
    "reward_center_coefficient": "reward-model centering coefficient",
    "max_completion_length": "generation budget (Dr. GRPO's norm_len)",
    "rloo_normalize_advantages": "whether RLOO advantages are normalised",
}


def capability(adapter, name: str, estimator: str | None = None):
    """What ``adapter`` declares it honours for capability ``name`` (the default if undeclared).

    A declaration may be narrowed for one function with the key ``"<function>.<capability>"``
    (``"value_loss.agg": ["token-mean"]`` where the critic aggregates one way only); that key
    wins for calls of that function."""
    if name not in CAPABILITIES:
        raise ValueError(f"unknown capability {name!r}; known: {', '.join(CAPABILITIES)}")
    declared = getattr(adapter, "capabilities", None) or {}
    value = declared.get(name, CAPABILITIES[name][0])
    if estimator is not None:
        value = declared.get(f"{estimator}.{name}", value)
    return tuple(value) if isinstance(value, (list, tuple)) else value


def honours(adapter, name: str, value, estimator: str | None = None, default=None) -> bool:
    """Whether ``adapter`` honours capability ``name`` set to ``value`` in ``estimator``.

    A list-valued capability (``agg``, ``scale``, ``kl_kind``) honours the values it lists; a
    value outside the contract's vocabulary (an unknown mode) is not the capability's business
    and counts as honoured (rejecting it is the implementation's job). A boolean capability
    that is False honours only the value that needs no capability: None, or ``default``."""
    allowed = capability(adapter, name, estimator)
    vocabulary = CAPABILITIES[name][0]
    if isinstance(vocabulary, tuple):
        return not isinstance(value, str) or value not in vocabulary or value in allowed
    plain = isinstance(value, (bool, int, float, str))        # a tensor margin is never a default
    return allowed is True or value is None or (plain and value == default)


#: declarations keyed by check-id globs whose values are sentences or URLs (str -> str):
#: ``upstream`` (where the framework tracks a deviation) and ``qualified`` (a pass that holds
#: only because the adapter shaped the input so that the framework's behaviour cannot show)
STRING_DECLARATIONS = ("upstream", "qualified")


def declaration_errors(adapter) -> list[str]:
    """Problems with an adapter's ``capabilities`` (unknown names, values outside the
    vocabulary) and with its ``upstream`` and ``qualified`` declarations (each a dict of
    check-id glob -> str); the runner reports them as warnings."""
    out = []
    for what in STRING_DECLARATIONS:
        declared = getattr(adapter, what, None)
        if declared is None:
            continue
        if not isinstance(declared, dict):
            out.append(f"{what} should be a dict of check-id glob -> str, got "
                       f"{type(declared).__name__}")
            continue
        out += [f"{what}[{k!r}] should be a non-empty str (glob -> str), got {v!r}"
                for k, v in declared.items()
                if not isinstance(k, str) or not isinstance(v, str) or not v.strip()]
    for key, value in (getattr(adapter, "capabilities", None) or {}).items():
        name = key.rsplit(".", 1)[-1]
        if name not in CAPABILITIES:
            out.append(f"capabilities key {key!r} is not a capability ({', '.join(CAPABILITIES)}, "
                       "optionally prefixed by a function name and a dot)")
            continue
        default = CAPABILITIES[name][0]
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or not (value or name == "algorithms"):
                out.append(f"capabilities[{key!r}] should be a non-empty list of {default}")
            else:
                out += [f"capabilities[{key!r}]: {v!r} is not one of {default}"
                        for v in value if v not in default]
        elif not isinstance(value, bool):
            out.append(f"capabilities[{key!r}] should be True or False, got {value!r}")
    return out


def defaults_errors(defaults: dict) -> list[str]:
    """Keys of ``framework_defaults()`` outside the vocabulary."""
    return [f"framework_defaults key {k!r} is not in the vocabulary (conformance.contract."
            f"DEFAULTS_KEYS)" for k in defaults if k not in DEFAULTS_KEYS]


__all__ = ["AGG_MODES", "ALGORITHMS", "CAPABILITIES", "CONTRACT_VERSION", "DEFAULTS_KEYS",
           "KL_KINDS", "SCALES", "STRING_DECLARATIONS", "TRAIN_CONFIG_KEYS", "Unsupported",
           "capability", "declaration_errors", "defaults_errors", "honours"]
