"""Training checks (kind ``training``): one real optimisation step through the adapter's
``train_step``, against refimpl's recipe (docs/contract.md, "Training steps").

Function-level checks cannot see what goes wrong between the functions: the loss divided by the
wrong count under gradient accumulation, a token-mean taken per micro-batch, the KL averaged over
padding, the temperature forgotten in the policy's or the reference's log-probs, log-probs read
from logits shifted by one, position ids that ignore left padding, advantages computed on the
wrong groups. Each check below runs the adapter's step on the fixtures of
``conformance.training`` (tiny Llama and GPT-2 models, ragged batches) and compares the loss and
every parameter's gradient.

Tolerance. Both sides run in float32 on the same weights and inputs; the same loss computed in
another order (micro-batches, another reduction) gives gradients whose relative L2 error per
parameter is at most 4e-6 on these fixtures (measured on refimpl: 3.8e-6 in ``kl-term-exact``,
where two steps are subtracted; 1.2e-6 for the reward model; 5e-7 elsewhere). ``GRAD_TOL =
1e-4`` leaves a margin of 25 above that; a 1e-3 relative change (the loss scaled by 1.001)
measures exactly 1e-3, ten times the tolerance.

Mutants: each check names the broken ``train_step`` implementations it must reject, defined at
the end of this module. They are refimpl's ``train_step`` with one of the recipe's helpers
replaced for the duration of the call (a bug modelled on a real one), so the rest of the step is
the recipe's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from pathlib import Path

import torch

import refimpl
from conformance import Unsupported
from conformance.checks.templates import mutant
from conformance.context import AdapterMisbehaved, CheckFailed, NotProvided
from conformance.contract import capability
from conformance.registry import Tolerance, check
from conformance.training import (
    ARCHS,
    config_for,
    fixture,
    online_batch,
    pad_batch,
    preference_batch,
    step_models,
    trainable,
)
from refimpl import recipes

GRAD_TOL = 1e-4
TOL = Tolerance(GRAD_TOL, GRAD_TOL, "relative L2 error of each parameter's gradient and relative "
                "error of the loss, float32: the same loss computed in another order differs by "
                "at most 4e-6 on these fixtures; 1e-4 sees a 1e-3 relative change ten times over")
ONLINE = recipes.ONLINE
PREFERENCE = recipes.PREFERENCE
KL_IN_LOSS = ("grpo", "dr_grpo", "dapo", "rloo")        # recipes whose KL may be a loss term
KL_IN_REWARD_ONLY = ("reinforce_pp", "ppo")             # recipes that refuse kl_in="loss"
SECTION = "checks"

CAUSES = {
    "step": "log-probs read from logits shifted by one; position ids that ignore left padding "
            "(GPT-2 only); advantages from the wrong groups (ids taken as contiguous blocks); "
            "another aggregation, KL estimator or KL placement than the config's; padding read",
    "grad-accum": "the loss divided by the wrong count under gradient accumulation (divided by "
                  "k twice, or not at all); a token-mean taken per micro-batch and then averaged; "
                  "group statistics computed per micro-batch",
    "padding": "position ids from arange instead of the attention mask (absolute positions); "
               "a mean over the padded width; the last position read instead of the last real "
               "token",
    "kl": "the KL term dropped; averaged over padded positions (its weight shrinks as padding "
          "grows); aggregated differently from the policy loss; another estimator",
    "kl-reward": "the KL dropped from the reward; the policy's current log-probs used instead of "
                 "the rollout's; another estimator or coefficient",
    "temperature": "the temperature forgotten in the policy's or in the reference's log-probs",
    "nan": "padded positions masked by multiplication (NaN * 0 = NaN) instead of selected",
    "config": "the option is ignored and the framework's own default used (or a constant in its "
              "code)",
}


# --- running a step -------------------------------------------------------------------------------

def _train_step(ctx):
    fn = getattr(ctx.adapter, "train_step", None)
    if fn is None or not callable(fn):
        raise NotProvided("train_step not provided")
    return fn


def fit(ctx, config: dict, about=()) -> dict:
    """``config`` fitted to what the adapter declares it honours for this algorithm (its
    ``capabilities``, narrowed as ``"<algorithm>.<capability>"``): an option the check is about
    that it does not honour is ``Unsupported``; any other is replaced by one it honours."""
    config = dict(config)
    alg, adapter = config["algorithm"], ctx.adapter
    name = getattr(adapter, "name", "the adapter")
    if alg not in capability(adapter, "algorithms"):
        raise Unsupported(f"{name}'s train_step does not implement {alg} (capabilities "
                          f"algorithms = {list(capability(adapter, 'algorithms'))})")
    for key in ("agg", "kl_kind", "kl_in", "scale"):
        allowed = capability(adapter, key, alg)
        if key == "kl_in" and alg in KL_IN_REWARD_ONLY:     # what the recipe itself accepts
            allowed = tuple(v for v in allowed if v == "reward")
        if config[key] in allowed:
            continue
        if key in about or not allowed:
            raise Unsupported(f"{name} does not honour {key}={config[key]!r} for {alg} (its "
                              f"capabilities: {key} = {list(allowed)})")
        config[key] = allowed[0]
    resets = {"clip_high": ("clip_high", config["clip_low"]), "dual_clip": ("dual_clip", None),
              "norm_len": ("norm_len", None), "temperature": ("temperature", 1.0),
              "value_clip": ("value_clip", None),
              "eps": ("eps", recipes.default_config(alg)["eps"])}
    for cap, (key, plain) in resets.items():
        if config[key] == plain or capability(adapter, cap, alg) is True:
            continue
        if cap in about:
            raise Unsupported(f"{name} does not honour {key}={config[key]!r} for {alg}")
        config[key] = plain
    return config


def _snapshot(tensors: dict) -> dict:
    return {k: v.detach().clone() for k, v in tensors.items() if isinstance(v, torch.Tensor)}


def _changed(before: dict, after: dict) -> list[str]:
    out = []
    for k, v in before.items():
        a = after.get(k)
        same = (isinstance(a, torch.Tensor) and a.shape == v.shape
                and bool(((a == v) | (a.isnan() & v.isnan())).all()) if v.is_floating_point()
                else isinstance(a, torch.Tensor) and torch.equal(a, v))
        if not same:
            out.append(k)
    return out


def adapter_step(ctx, models: dict, batch: dict, config: dict) -> tuple[float, dict]:
    """The adapter's step: ``(loss, {parameter name: float64 gradient})``. Misbehaviour outside
    the check's subject (raised, wrong return, a parameter without gradient, weights changed,
    the batch modified) is ``error``."""
    fn = _train_step(ctx)
    alg = config["algorithm"]
    model, ref = step_models(alg, models)
    named = trainable(alg, models, config)
    for p in named.values():
        p.grad = None
    batch_before, weights_before = _snapshot(batch), _snapshot(named)
    ref_before = _snapshot(dict(ref.named_parameters())) if ref is not None else {}
    ctx.calls += 1
    where = f"[{alg}, sample {ctx.sample}]"
    try:
        out = fn(model, ref, batch, dict(config))
    except (Unsupported, CheckFailed, AdapterMisbehaved, NotProvided):
        raise
    except Exception as exc:                                          # noqa: BLE001
        raise AdapterMisbehaved(f"train_step raised {type(exc).__name__}: {exc} {where}") from exc
    if isinstance(out, torch.Tensor):
        if out.dim() != 0 or not out.is_floating_point():
            raise AdapterMisbehaved(f"train_step returned a tensor of shape {tuple(out.shape)}; "
                                    f"the contract asks for a 0-dim float loss {where}")
        if config["grad_accum"] != 1:
            raise AdapterMisbehaved(f"train_step returned a loss tensor with grad_accum = "
                                    f"{config['grad_accum']}: it must run the micro-batches "
                                    f"itself and return {{'loss', 'grads'}} {where}")
        if not out.requires_grad:
            raise AdapterMisbehaved(f"train_step returned a loss not attached to the parameters "
                                    f"{where}")
        if any(p.grad is not None for p in named.values()):
            raise AdapterMisbehaved(f"train_step returned a loss tensor but also ran backward "
                                    f"itself: return {{'loss', 'grads'}} instead {where}")
        out.backward()
        loss, grads = float(out.detach()), {n: p.grad for n, p in named.items()}
    elif isinstance(out, dict) and "loss" in out and isinstance(out.get("grads"), dict):
        loss, grads = float(out["loss"]), out["grads"]
    else:
        raise AdapterMisbehaved(f"train_step returned {type(out).__name__}; the contract asks for "
                                f"a 0-dim loss tensor or {{'loss': float, 'grads': dict}} {where}")
    missing = [n for n in named if not isinstance(grads.get(n), torch.Tensor)]
    if missing:
        raise AdapterMisbehaved(f"no gradient for {len(missing)} parameter(s), e.g. {missing[0]} "
                                f"{where}")
    wrong = [n for n in named if tuple(grads[n].shape) != tuple(named[n].shape)]
    if wrong:
        raise AdapterMisbehaved(f"gradient of {wrong[0]} has shape {tuple(grads[wrong[0]].shape)}, "
                                f"but should be {tuple(named[wrong[0]].shape)} {where}")
    if _changed(batch_before, batch):
        raise AdapterMisbehaved(f"train_step modified the batch in place: "
                                f"{', '.join(_changed(batch_before, batch))} {where}")
    if ref is not None and _changed(ref_before, {n: p.detach() for n, p in ref.named_parameters()}):
        raise AdapterMisbehaved(f"train_step changed the reference model's weights {where}")
    if _changed(weights_before, {n: p.detach() for n, p in named.items()}):
        raise AdapterMisbehaved(f"train_step changed the weights (an optimizer step?): the "
                                f"contract asks for the loss and gradients only {where}")
    out_grads = {n: grads[n].detach().to(torch.float64).cpu() for n in named}
    for p in named.values():
        p.grad = None
    return loss, out_grads


def fresh(fx, config: dict) -> tuple[dict, dict]:
    """Fresh models, and ``config`` pointing at their critic."""
    models = fx.models()
    config = dict(config)
    if config["algorithm"] == "ppo":
        config["value_model"] = models["value"]
    return models, config


def recipe_step(fx, batch: dict, config: dict) -> tuple[float, dict]:
    """refimpl's recipe on fresh copies of the fixture's models: ``(loss, gradients)``."""
    models, config = fresh(fx, config)
    model, ref = step_models(config["algorithm"], models)
    step = recipes.RECIPES[config["algorithm"]](model, ref, batch, config)
    step.loss.backward()
    return float(step.loss.detach()), {n: p.grad.detach().to(torch.float64) for n, p in
                                       trainable(config["algorithm"], models, config).items()}


def run(ctx, fx, batch: dict, config: dict) -> tuple[float, dict]:
    models, config = fresh(fx, config)
    return adapter_step(ctx, models, batch, config)


def grad_errors(actual: dict, expected: dict) -> tuple[str, float, float]:
    """The parameter with the largest relative L2 error, that error, and its cosine."""
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in expected.values()))
    worst = ("", 0.0, 1.0)
    for name, e in expected.items():
        a = actual[name]
        norm = float(e.norm())
        # a parameter whose exact gradient is (nearly) 0, where chosen and rejected cancel, is
        # judged against 1e-3 of the whole gradient's norm: its rounding noise is not an error
        err = float((a - e).norm()) / max(norm, 1e-3 * total, 1e-30)
        if not math.isfinite(err):
            err = math.inf
        if err > worst[1] or (name and not worst[0]):
            cos = float((a * e).sum()) / max(float(a.norm()) * norm, 1e-30)
            worst = (name, err, cos)
    return worst


def compare(ctx, actual: tuple, expected: tuple, what: str, cause: str, nan_is_failure=False):
    """The loss and every gradient of ``actual`` against ``expected``, within ``GRAD_TOL``."""
    (la, ga), (le, ge) = actual, expected
    nonfinite = [n for n, g in ga.items() if not bool(torch.isfinite(g).all())]
    if nonfinite or not math.isfinite(la):
        msg = (f"{what}: non-finite {'loss' if not math.isfinite(la) else 'gradient of ' + nonfinite[0]} "
               f"where the reference is finite. Likely: {CAUSES[cause]}")
        if nan_is_failure:
            raise CheckFailed(msg, sample=ctx.sample, expected=le, actual=str(la), cls="padding")
        raise AdapterMisbehaved(msg + f" [sample {ctx.sample}]")
    name, err, cos = grad_errors(ga, ge)
    ctx.max_rel_err = max(ctx.max_rel_err, err)
    if err > GRAD_TOL:
        raise CheckFailed(
            f"{what}: gradient of {name} off by {err:.2e} relative L2 (cosine {cos:.6f}; loss "
            f"{la:.6g}, should be {le:.6g}). Likely: {CAUSES[cause]}",
            sample=ctx.sample, expected=le, actual=la, abs_err=abs(la - le), rel_err=err,
            cls="gradient")
    lerr = abs(la - le) / max(abs(le), 1e-2)
    if lerr > GRAD_TOL:
        raise CheckFailed(f"{what}: loss {la:.8g}, but should be {le:.8g} (relative error "
                          f"{lerr:.2e}; every gradient agrees within {err:.1e})",
                          sample=ctx.sample, expected=le, actual=la, abs_err=abs(la - le),
                          rel_err=lerr, cls="value")


def _batch(fx, alg: str, temperature: float = 1.0) -> dict:
    return (preference_batch(fx) if alg in PREFERENCE
            else online_batch(fx, alg, temperature))


# --- the checks -----------------------------------------------------------------------------------

def _register(alg: str, name: str, body, *, equation: str, hint: str, mutants: tuple,
              section: str = SECTION, cls: str | None = "gradient", consequence: str = ""):
    @functools.wraps(body)
    def provided_first(ctx):
        # an adapter without train_step is a skip before any model is built: building one
        # imports transformers, which under a short --timeout could turn the skip into an error
        _train_step(ctx)
        return body(ctx)

    check(f"{alg}/{name}", estimator=alg, kind="training", section=section, equation=equation,
          hint=hint, source=recipes_source(alg), tol=TOL, mutants=mutants, cls=cls,
          consequence=consequence)(provided_first)


def recipes_source(alg: str) -> str:
    """The paper of ``alg``'s recipe, from refimpl.recipes' table."""
    for line in (recipes.__doc__ or "").splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 2 and cells[1] == alg:
            return cells[2]
    return ""


def _step_matches(alg: str, arch: str):
    def body(ctx):
        fx = fixture(arch)
        with ctx.on(f"{arch}, default options").variant():
            config = fit(ctx, config_for(alg, fx, fx.models()))
            batch = _batch(fx, alg)
            compare(ctx, run(ctx, fx, batch, config), recipe_step(fx, batch, config),
                    f"{alg} step on {arch}" + ("" if alg in PREFERENCE else
                                                f" (agg {config['agg']})"), "step")
    return body


def _grad_accum(alg: str):
    def body(ctx):
        fx = fixture("gpt2")
        batch = _batch(fx, alg)
        modes = recipes.AGG_MODES if alg in ONLINE else (None,)
        for agg in modes:
            overrides = {"agg": agg} if agg else {}
            for k in (2, 4):
                with ctx.on(f"agg {agg}, grad_accum {k}" if agg else f"grad_accum {k}").variant():
                    config = fit(ctx, config_for(alg, fx, fx.models(), **overrides), about=("agg",))
                    base = run(ctx, fx, batch, config)
                    split = run(ctx, fx, batch, {**config, "grad_accum": k})
                    compare(ctx, split, base, f"{alg}, grad_accum {k} against 1"
                            + (f" (agg {config['agg']})" if agg else ""), "grad-accum")
    return body


def _padding(alg: str):
    def body(ctx):
        fx = fixture("gpt2")
        batch = _batch(fx, alg)
        with ctx.on("3 more left pads on the prompts").variant():
            config = fit(ctx, config_for(alg, fx, fx.models()))
            compare(ctx, run(ctx, fx, pad_batch(batch, 3, 0, fx.tokenizer.pad_token_id), config),
                    run(ctx, fx, batch, config), f"{alg} with 3 more left pads against without",
                    "padding", nan_is_failure=True)
        with ctx.on("2 more right pads on the completions").variant():
            config = fit(ctx, config_for(alg, fx, fx.models()))
            if config.get("agg") == "seq-mean-token-sum-norm" and config["norm_len"] is None:
                # defined on the padded width: fix the constant to the unpadded width
                config = fit(ctx, {**config, "norm_len": batch["completion_ids"].shape[1]},
                             about=("norm_len",))
            compare(ctx, run(ctx, fx, pad_batch(batch, 0, 2, fx.tokenizer.pad_token_id), config),
                    run(ctx, fx, batch, config), f"{alg} with 2 more right pads against without",
                    "padding", nan_is_failure=True)
    return body


def _kl_term(alg: str):
    def body(ctx):
        fx = fixture("gpt2")
        beta = 1.0      # a large term: the difference of two steps cancels less of it
        with ctx.on("beta 1 against beta 0, 4 extra right pads").variant():
            config = fit(ctx, config_for(alg, fx, fx.models(), kl_in="loss", beta=beta),
                         about=("kl_in",))
            batch = _batch(fx, alg)
            if config["agg"] == "seq-mean-token-sum-norm" and config["norm_len"] is None:
                # on the padded width a mean over padding is the mode itself: fix the constant
                config = fit(ctx, {**config, "norm_len": batch["completion_ids"].shape[1]},
                             about=("norm_len",))
            batch = pad_batch(batch, 0, 4, fx.tokenizer.pad_token_id)
            la, ga = run(ctx, fx, batch, config)
            l0, g0 = run(ctx, fx, batch, {**config, "beta": 0.0})
            expected = _kl_gradient(fx, batch, config, beta)
            diff = (la - l0, {n: ga[n] - g0[n] for n in ga})
            compare(ctx, diff, expected, f"{alg}: step(beta={beta}) - step(beta=0) against beta "
                    "times the aggregated KL term", "kl")
    return body


def _kl_gradient(fx, batch: dict, config: dict, beta: float) -> tuple[float, dict]:
    """beta * aggregate(kl_estimate(logp, ref_logp)) and its gradient, by refimpl."""
    models = fx.models()
    mask = batch["completion_mask"].bool()
    logp = recipes.completion_logprobs(models["policy"], batch["prompt_ids"], batch["prompt_mask"],
                                       batch["completion_ids"], batch["completion_mask"],
                                       config["temperature"])
    with torch.no_grad():
        ref = recipes.completion_logprobs(models["reference"], batch["prompt_ids"],
                                          batch["prompt_mask"], batch["completion_ids"],
                                          batch["completion_mask"], config["temperature"])
    term = beta * refimpl.aggregate(refimpl.kl_estimate(logp, ref, mask, config["kl_kind"]), mask,
                                    config["agg"], config["norm_len"])
    term.backward()
    return float(term.detach()), {n: p.grad.detach().to(torch.float64)
                                  for n, p in models["policy"].named_parameters()}


def _against_recipe(alg: str, label: str, cause: str, about: tuple, temperature: float = 1.0,
                    **overrides):
    def body(ctx):
        fx = fixture("gpt2")
        with ctx.on(label).variant():
            config = fit(ctx, config_for(alg, fx, fx.models(), temperature=temperature,
                                         **overrides), about=about)
            batch = _batch(fx, alg, temperature)
            compare(ctx, run(ctx, fx, batch, config), recipe_step(fx, batch, config),
                    f"{alg} ({label}) against the recipe", cause)
    return body


def _nan_old_logp(alg: str):
    def body(ctx):
        fx = fixture("gpt2")
        with ctx.on("old_logp NaN at padded positions").variant():
            config = fit(ctx, config_for(alg, fx, fx.models()))
            batch = _batch(fx, alg)
            poisoned = dict(batch)
            for key in ("old_logp", "old_values"):
                if key in batch:
                    poisoned[key] = batch[key].masked_fill(~batch["completion_mask"].bool(),
                                                           math.nan)
            compare(ctx, run(ctx, fx, poisoned, config), run(ctx, fx, batch, config),
                    f"{alg} with NaN in padded old_logp against 0 there", "nan",
                    nan_is_failure=True)
    return body


_STEP_MUTANTS = {"grpo": ("logits_shifted_by_one", "advantages_from_contiguous_groups"),
                 "dr_grpo": ("logits_shifted_by_one", "advantages_from_contiguous_groups"),
                 "dapo": ("logits_shifted_by_one", "advantages_from_contiguous_groups"),
                 "rloo": ("logits_shifted_by_one", "advantages_from_contiguous_groups"),
                 "reinforce_pp": ("logits_shifted_by_one",),
                 "ppo": ("logits_shifted_by_one", "values_shifted_by_one",
                         "gae_reads_padded_values"),
                 "dpo": ("logits_shifted_by_one", "preference_length_normalised"),
                 "ipo": ("logits_shifted_by_one", "preference_length_normalised"),
                 "reward_model": ("reward_read_at_last_position",)}

for _alg in recipes.ALGORITHMS:
    _eq = f"loss and grad of train_step == refimpl.recipes.{_alg} (docs/contract.md table)"
    for _arch in ARCHS:
        _register(_alg, f"step-matches-recipe-{_arch}", _step_matches(_alg, _arch),
                  equation=_eq, section="config-and-recipes",
                  hint=f"compute the {_alg} step as the contract's recipe table composes it, with "
                       "log-probs from the logits at P - 1 + t and position ids cumsum(mask) - 1",
                  mutants=_STEP_MUTANTS[_alg] + (("position_ids_from_arange",)
                                                 if _arch == "gpt2" else ()),
                  consequence="every update of this algorithm differs from the paper's")
    _register(_alg, "grad-accum", _grad_accum(_alg), section="gradient-accumulation",
              equation="sum of the k micro-batch gradients == the whole batch's gradient, k = 2, 4",
              hint="scale each micro-batch's loss by its share of the whole batch's denominator "
                   "(real tokens for token-mean, rows otherwise); compute advantages before "
                   "splitting",
              mutants=("accumulation_divided_twice",) + (("micro_batch_token_mean",
                                                          "advantages_per_micro_batch")
                                                         if _alg in ONLINE else ()),
              consequence="the effective learning rate or the token weighting depends on "
                          "gradient_accumulation_steps")
    _register(_alg, "padding-invariant", _padding(_alg), section="checks",
              equation="step(batch with extra left and right padding) == step(batch)",
              hint="position ids from cumsum(attention_mask) - 1; select padded positions out "
                   "(never average over the padded width)",
              mutants=("position_ids_from_arange",) if _alg != "reward_model"
              else ("position_ids_from_arange", "reward_read_at_last_position"),
              consequence="the update depends on how much padding the batch happens to carry")

for _alg in ONLINE:
    _register(_alg, "temperature", _against_recipe(_alg, "temperature 0.7, beta 0.1", "temperature",
                                                   ("temperature",), 0.7, beta=0.1),
              section="batch", equation="logits / temperature before log_softmax, for the "
              "policy and for the reference",
              hint="divide the logits of the policy and of the reference by the temperature the "
                   "rollout sampled with",
              mutants=("temperature_ignored_by_policy", "temperature_ignored_by_reference"),
              consequence="importance ratios and KL are computed against another distribution "
                          "than the one sampled from")
    _register(_alg, "nan-old-logp-ignored", _nan_old_logp(_alg), section="checks",
              equation="step(old_logp with NaN at padding) == step(old_logp)",
              hint="select real positions with torch.where / masked_fill before reducing; do not "
                   "multiply by the mask", mutants=("nan_masked_by_multiplication",),
              cls="padding", consequence="one NaN at a padded position poisons the whole step")

for _alg in KL_IN_LOSS:
    _register(_alg, "kl-term-exact", _kl_term(_alg), section="checks",
              equation="grad step(beta) - grad step(0) == beta grad aggregate(k(logp, ref_logp), "
                       "mask, agg)",
              hint="add beta times the KL estimate aggregated like the policy loss, over real "
                   "tokens only",
              mutants=("kl_dropped", "kl_averaged_over_padding"),
              consequence="the KL penalty is not the configured one: its strength depends on "
                          "padding, or it is absent")
    _register(_alg, "kl-in-reward", _against_recipe(_alg, "kl_in reward, k1, beta 0.1",
                                                    "kl-reward", ("kl_in",), kl_in="reward",
                                                    kl_kind="k1", beta=0.1),
              section="config-and-recipes",
              equation="s = scores - beta sum_t k(old_logp, ref_logp), then the recipe",
              hint="shape the scores with the rollout's (old) log-probs against the reference "
                   "before the group statistics", mutants=("kl_dropped", "k3_in_the_reward"),
              consequence="the KL penalty in the reward is not the configured one")


#: per algorithm, options moved off the common defaults one at a time: "config wins" (contract,
#: "Config and recipes") must hold for each, or the variant must say Unsupported
MOVED = {
    "grpo": {"clip_low": 0.1, "scale": "batch", "kl_kind": "k2", "dual_clip": 2.0,
             "eps": 1e-3},
    "dr_grpo": {"clip_low": 0.1, "kl_kind": "k2", "dual_clip": 2.0},
    "dapo": {"clip_low": 0.1, "clip_high": 0.35, "beta": 0.05},
    "rloo": {"clip_low": 0.1, "kl_kind": "k2", "beta": 0.2},
    "reinforce_pp": {"clip_low": 0.1, "gamma": 0.9, "kl_kind": "k2", "beta": 0.05},
    "ppo": {"clip_low": 0.1, "gamma": 0.9, "lam": 0.8, "vf_coef": 0.7, "value_clip": 0.3,
            "whiten": False, "beta": 0.1},
    "dpo": {"beta": 0.3, "label_smoothing": 0.1},
    "ipo": {"tau": 0.3},
}
_CAPABILITY_OF = {"clip_low": (), "scale": ("scale",), "kl_kind": ("kl_kind",),
                  "dual_clip": ("dual_clip",), "clip_high": ("clip_high",),
                  "value_clip": ("value_clip",), "eps": ("eps",)}


#: options of MOVED that concern the KL: the others are moved with beta = 0, so that a deviation
#: of the KL term (declared under step-matches-recipe) does not hide whether the option is read
_KL_OPTIONS = ("kl_kind", "beta")


def _config_honoured(alg: str):
    def body(ctx):
        # rotary positions: a position-id deviation (declared under step-matches-recipe-gpt2)
        # does not hide whether the option is read
        fx = fixture("llama")
        batch = _batch(fx, alg)
        for key, value in MOVED[alg].items():
            with ctx.on(f"{key} = {value}").variant():
                moved = {key: value}
                if key == "clip_low":                       # both sides, so no clip_high needed
                    moved["clip_high"] = value
                if alg in ONLINE and key not in _KL_OPTIONS:
                    moved["beta"] = 0.0
                elif alg in ONLINE and key == "kl_kind":
                    moved["beta"] = 0.1
                config = fit(ctx, config_for(alg, fx, fx.models(), **moved),
                             about=_CAPABILITY_OF.get(key, ()))
                ctx.require(all(config[k] == v for k, v in moved.items()),
                            f"internal: {key} was fitted away")
                compare(ctx, run(ctx, fx, batch, config), recipe_step(fx, batch, config),
                        f"{alg} with {key} = {value} against the recipe", "config")
    return body


for _alg, _moved in MOVED.items():
    _register(_alg, "config-honoured", _config_honoured(_alg), section="config-and-recipes",
              equation="config wins: " + ", ".join(f"{k} = {v}" for k, v in _moved.items())
              + ", one at a time, against the recipe",
              hint="read every option from config; a variant that cannot take one raises "
                   "conformance.Unsupported",
              mutants=("options_from_framework_defaults",),
              consequence="the configured value is silently replaced by the framework's own")


# --- short runs (--slow) --------------------------------------------------------------------------

RUN_ALGORITHMS = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo")
RUN_TASK, RUN_SEED, WINDOW = "reverse", 0, 10
RUN_TIMEOUT = 900.0


def runs_dir() -> Path | None:
    """Where the short runs write their metrics and curves: ``$RLCONFORM_RUNS_DIR`` (``rlconform
    certify --slow`` sets it to ``OUT/runs``), or nowhere."""
    where = os.environ.get("RLCONFORM_RUNS_DIR")
    return Path(where) if where else None


def committed_curve(alg: str) -> list[float] | None:
    """refimpl's own loop on the same task and seed, from its committed metrics
    (``reports/training/<alg>/metrics.jsonl`` of a checkout), or None when not there."""
    path = Path(__file__).resolve().parents[2] / "reports" / "training" / alg / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["reward"]) for r in rows if "reward" in r]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def plot_runs(path: Path, alg: str, name: str, rewards: list[float], reference) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rewards, label=name)
    if reference:
        ax.plot(reference, label="refimpl (committed run)", alpha=0.7)
    ax.set(xlabel="step", ylabel="mean reward of sampled completions",
           title=f"{alg} on {RUN_TASK}, seed {RUN_SEED}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _run_rises(alg: str):
    def body(ctx):
        fn = getattr(ctx.adapter, "train_run", None)
        if fn is None or not callable(fn):
            raise NotProvided("train_run not provided")
        from refimpl.tasks import make_task
        from refimpl.train.common import sft_policy
        task = make_task(RUN_TASK, seed=RUN_SEED)
        model_path = str(sft_policy(task, RUN_SEED))
        with ctx.on(f"{alg} on {RUN_TASK}, {task.steps} steps, seed {RUN_SEED}").variant():
            config = fit(ctx, recipes.default_config(alg, model_path=model_path,
                                                     ref_model_path=model_path))
            if alg == "ppo":
                config.pop("value_model", None)
            out = runs_dir()
            out_dir = None if out is None else out / getattr(ctx.adapter, "name", "adapter") / alg
            ctx.calls += 1
            try:
                # the adapter's own files go one level down; the check's curve sits above them
                metrics = fn(model_path, task, config, task.steps, RUN_SEED,
                             None if out_dir is None else str(out_dir / "run"))
            except (Unsupported, NotProvided):
                raise
            except Exception as exc:                                  # noqa: BLE001
                raise AdapterMisbehaved(f"train_run raised {type(exc).__name__}: {exc}") from exc
            if not isinstance(metrics, list) or len(metrics) != task.steps or not all(
                    isinstance(m, dict) and "reward" in m and "kl" in m for m in metrics):
                raise AdapterMisbehaved(f"train_run must return a list of {task.steps} dicts (one "
                                        "per step), each with 'reward' and 'kl'")
            try:
                rewards = [float(m["reward"]) for m in metrics]
                kls = [float(m["kl"]) for m in metrics]
            except (TypeError, ValueError) as exc:
                raise AdapterMisbehaved(f"train_run's reward or kl is not a number: {exc}") from exc
            start = sum(rewards[:WINDOW]) / len(rewards[:WINDOW])
            end = sum(rewards[-WINDOW:]) / len(rewards[-WINDOW:])
            reference = committed_curve(alg)
            ref_note = ("" if not reference else
                        f"; refimpl's committed loop: {_mean(reference[:WINDOW]):.3f} -> "
                        f"{_mean(reference[-WINDOW:]):.3f}")
            ctx.note(f"reward {start:.3f} -> {end:.3f} over {len(rewards)} steps (mean of the "
                     f"first and last {WINDOW}), margin {task.margin}{ref_note}")
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "metrics.jsonl").write_text(
                    "".join(json.dumps(m, default=str) + "\n" for m in metrics))
                plot_runs(out_dir / "curves.png", alg, getattr(ctx.adapter, "name", "adapter"),
                          rewards, reference)
            ctx.require(not any(math.isnan(r) for r in rewards),
                        f"NaN reward at step {next((i for i, r in enumerate(rewards) if math.isnan(r)), 0)}")
            ctx.require(all(math.isfinite(k) for k in kls), "the KL is not finite")
            ctx.require(end - start >= task.margin,
                        f"the mean reward rose by {end - start:.3f} ({start:.3f} -> {end:.3f}), "
                        f"less than the task's margin {task.margin} in {len(rewards)} steps",
                        expected=task.margin, actual=end - start)
    return body


for _alg in RUN_ALGORITHMS:
    check(f"{_alg}/run-reward-rises", estimator=_alg, kind="training", section="short-runs",
          equation="mean reward of the last 10 steps - of the first 10 >= task.margin; no NaN; "
                   "KL finite",
          hint="a short real run of the trainer from the given SFT checkpoint on refimpl's task",
          source=recipes_source(_alg), mutants=("run_never_learns",), cls="gradient",
          slow=True, timeout=RUN_TIMEOUT,
          consequence="the trainer does not learn the task a reference loop learns")(_run_rises(_alg))


@mutant("train_run", "a run whose optimizer never steps: the reward stays where it started")
def run_never_learns(model_path, task, config, steps, seed, out_dir=None):
    return [{"reward": 0.1, "kl": 0.0} for _ in range(steps)]


# --- mutants: refimpl's train_step with one helper of the recipe broken -----------------------

@contextlib.contextmanager
def _patched(**replacements):
    saved = {k: getattr(recipes, k) for k in replacements}
    for k, v in replacements.items():
        setattr(recipes, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(recipes, k, v)


def _with(replacements: dict, model, ref_model, batch, config):
    """refimpl's step with ``replacements`` in place while the graph is built (backward, run
    later by the caller, needs none of the helpers)."""
    with _patched(**replacements):
        return recipes.train_step(model, ref_model, batch, config)


_ORIG = {k: getattr(recipes, k) for k in ("completion_logits", "completion_values", "_inputs",
                                          "_logps", "_ref_logp", "_share", "aggregate",
                                          "group_normalized_advantages",
                                          "leave_one_out_advantages", "ppo_clip_loss",
                                          "sequence_scores", "_pair_logps")}


@mutant("train_step", "log-probs read from the logits at P - 2 + t: shifted by one position")
def logits_shifted_by_one(model, ref_model, batch, config):
    def shifted(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=1.0):
        ids, am, pos = _ORIG["_inputs"](prompt_ids, prompt_mask, completion_ids, completion_mask)
        P, T = prompt_ids.shape[1], completion_ids.shape[1]
        logits = model(input_ids=ids, attention_mask=am, position_ids=pos).logits
        return logits[:, P - 2:P - 2 + T].float() / temperature
    return _with({"completion_logits": shifted}, model, ref_model, batch, config)


@mutant("train_step", "position ids 0..L-1 whatever the left padding (no position_ids passed)")
def position_ids_from_arange(model, ref_model, batch, config):
    def arange_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask):
        ids, am, _ = _ORIG["_inputs"](prompt_ids, prompt_mask, completion_ids, completion_mask)
        return ids, am, torch.arange(ids.shape[1]).expand(ids.shape)
    return _with({"_inputs": arange_inputs}, model, ref_model, batch, config)


@mutant("train_step", "group statistics over contiguous blocks of G samples (reshape(-1, G)) "
        "while the ids are interleaved")
def advantages_from_contiguous_groups(model, ref_model, batch, config):
    def blocks(ids):
        n = int(torch.unique(ids).numel())
        return torch.arange(ids.numel()) // (ids.numel() // n)
    return _with({"group_normalized_advantages": lambda s, ids, scale, eps: _ORIG[
                      "group_normalized_advantages"](s, blocks(ids), scale, eps),
                  "leave_one_out_advantages": lambda s, ids: _ORIG["leave_one_out_advantages"](
                      s, blocks(ids))}, model, ref_model, batch, config)


@mutant("train_step", "the critic's value read at P + t (the state after token t)")
def values_shifted_by_one(model, ref_model, batch, config):
    def shifted(value_model, prompt_ids, prompt_mask, completion_ids, completion_mask):
        ids, am, pos = _ORIG["_inputs"](prompt_ids, prompt_mask, completion_ids, completion_mask)
        P, T = prompt_ids.shape[1], completion_ids.shape[1]
        out = value_model(input_ids=ids, attention_mask=am, position_ids=pos).logits
        return torch.cat([out[:, P:P + T, 0], out[:, -1:, 0]], dim=1)[:, :T].float()
    return _with({"completion_values": shifted}, model, ref_model, batch, config)


@mutant("train_step", "sequence log-probs averaged over the completion's tokens instead of summed")
def preference_length_normalised(model, ref_model, batch, config):
    def means(model, mb):
        out = []
        for side in ("chosen", "rejected"):
            ids, m = mb[f"{side}_ids"], mb[f"{side}_mask"]
            logp = recipes.completion_logprobs(model, mb["prompt_ids"], mb["prompt_mask"], ids, m)
            out.append((logp * m).sum(1) / m.sum(1))
        return out[0], out[1]
    return _with({"_pair_logps": means}, model, ref_model, batch, config)


@mutant("train_step", "the reward read at the last position of the padded row, not at the last "
        "real token")
def reward_read_at_last_position(model, ref_model, batch, config):
    def last(reward_model, prompt_ids, prompt_mask, completion_ids, completion_mask):
        ids, am, pos = _ORIG["_inputs"](prompt_ids, prompt_mask, completion_ids, completion_mask)
        hidden = reward_model.base_model(input_ids=ids, attention_mask=am,
                                         position_ids=pos).last_hidden_state
        return reward_model.score(hidden)[:, -1, 0].float()
    return _with({"sequence_scores": last}, model, ref_model, batch, config)


@mutant("train_step", "each micro-batch's gradient divided by k once more (the trainer already "
        "scaled the loss)")
def accumulation_divided_twice(model, ref_model, batch, config):
    k = config["grad_accum"]
    out = recipes.train_step(model, ref_model, batch, config)
    if isinstance(out, dict):
        out = {"loss": out["loss"], "grads": {n: g / k for n, g in out["grads"].items()}}
    return out


@mutant("train_step", "a token-mean taken per micro-batch and then averaged over micro-batches")
def micro_batch_token_mean(model, ref_model, batch, config):
    def share(mask, rows, agg):
        return (rows.stop - rows.start) / mask.shape[0]
    return _with({"_share": share}, model, ref_model, batch, config)


@mutant("train_step", "GAE bootstraps from the padded entries of old_values after the last "
        "real token, instead of 0")
def gae_reads_padded_values(model, ref_model, batch, config):
    gae = recipes.gae
    return _with({"gae": lambda r, v, m, g, lam: gae(r, v, torch.ones_like(m), g, lam)},
                 model, ref_model, batch, config)


@mutant("train_step", "advantages (group statistics, whitening) computed per micro-batch")
def advantages_per_micro_batch(model, ref_model, batch, config):
    k = config["grad_accum"]
    if k == 1:
        return recipes.train_step(model, ref_model, batch, config)
    named = recipes.trained_parameters(model, config)
    mask = batch["completion_mask"].bool()
    total = 0.0
    for rows in recipes.micro_slices(mask.shape[0], k):
        mb = {key: v[rows] for key, v in batch.items()}
        step = recipes.RECIPES[config["algorithm"]](model, ref_model, mb, {**config, "grad_accum": 1})
        loss = step.loss * recipes._share(mask, rows, config["agg"])
        loss.backward()
        total += float(loss.detach())
    grads = {n: p.grad.detach().clone() for n, p in named.items()}
    for p in named.values():
        p.grad = None
    return {"loss": total, "grads": grads}


@mutant("train_step", "k3 in the reward whatever kl_kind says")
def k3_in_the_reward(model, ref_model, batch, config):
    seq = recipes._sequence_kl
    return _with({"_sequence_kl": lambda b, ref, c: seq(b, ref, {**c, "kl_kind": "k3"})},
                 model, ref_model, batch, config)


@mutant("train_step", "every option of MOVED replaced by the common default (config ignored)")
def options_from_framework_defaults(model, ref_model, batch, config):
    defaults = recipes.default_config(config["algorithm"])
    keys = set(MOVED.get(config["algorithm"], {})) | {"clip_high"}
    return recipes.train_step(model, ref_model, batch,
                              {**config, **{k: defaults[k] for k in keys}})


@mutant("train_step", "the KL dropped: neither in the loss nor in the reward")
def kl_dropped(model, ref_model, batch, config):
    return recipes.train_step(model, ref_model, batch, {**config, "beta": 0.0})


@mutant("train_step", "the KL term averaged over every position, padding included")
def kl_averaged_over_padding(model, ref_model, batch, config):
    return _with({"aggregate": lambda kl, mask, agg, norm_len: kl.mean()}, model, ref_model,
                 batch, config)


@mutant("train_step", "the policy's logits not divided by the temperature (the reference's are)")
def temperature_ignored_by_policy(model, ref_model, batch, config):
    def logps(m, b, temperature):
        return _ORIG["_logps"](m, b, temperature if m is ref_model else 1.0)
    return _with({"_logps": logps}, model, ref_model, batch, config)


@mutant("train_step", "the reference's logits not divided by the temperature")
def temperature_ignored_by_reference(model, ref_model, batch, config):
    return _with({"_ref_logp": lambda ref, b, c: _ORIG["_ref_logp"](ref, b, {**c,
                                                                             "temperature": 1.0})},
                 model, ref_model, batch, config)


@mutant("train_step", "padded positions masked by multiplying with the mask: NaN * 0 = NaN")
def nan_masked_by_multiplication(model, ref_model, batch, config):
    def leaky(logp, old_logp, A, mask, *args):
        leak = (torch.exp(logp - old_logp) * mask).sum() * 0.0
        return _ORIG["ppo_clip_loss"](logp, old_logp, A, mask, *args) + leak
    return _with({"ppo_clip_loss": leaky}, model, ref_model, batch, config)
