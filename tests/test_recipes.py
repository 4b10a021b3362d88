"""The training-step recipes (refimpl.recipes) against docs/contract.md, "Training steps".

Each recipe is held against the contract's table composed by hand, on the whole batch, from the
canonical functions (``hand_loss``, written from the table, with its own log-probabilities); and
against the contract's invariances: gradient accumulation, extra padding, temperature, NaN at
padded positions of ``old_logp``, the KL term, and the reward model's read-out. The main checks
keep a mutant beside them (a deliberately broken variant written here) and assert that the same
check rejects it.

Models are tiny (hidden 32, 2 layers, 2 heads), float32; the batch has B = 8 rows, prompts of width
P = 5 padded on the left, completions of width T = 6 padded on the right, with unequal lengths.

Tolerances. Everything runs in float32 (eps 1.2e-7), as the contract's models do. Two
computations of the same quantity that sum in a different order (micro-batches, a whole batch
composed by hand) agree to a relative L2 error of ~1e-7 on the gradient; the tolerance is
``REL = 1e-5``, which still sees the relative change of 1e-3 the contract asks a check to see.
A loss's rounding scales with the terms summed, not with their possibly cancelling sum, so a
loss is compared relative to ``max(|loss|, LOSS_FLOOR)``.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from refimpl import (aggregate, batch_normalized_advantages, bradley_terry_loss,
                     discounted_returns, dpo_loss, gae, group_normalized_advantages, ipo_loss,
                     kl_estimate, kl_penalized_rewards, leave_one_out_advantages, models,
                     ppo_clip_loss, recipes, sequence_logprob, token_logprobs, value_loss)
from refimpl.aggregation import AGG_MODES

REL = 1e-5            # float32 rounding of reordered sums: measured ~1e-7
LOSS_FLOOR = 1e-2     # losses are sums of terms of size ~1e-2..1; see the module docstring
SEEN = 1e-3           # the smallest relative change a check must see (contract, "Checks")

SIZES = {"hidden": 32, "layers": 2, "heads": 2}
B, P, T = 8, 5, 6
LEFT_PAD = [2, 0, 3, 0, 1, 0, 2, 4]              # padding on the left of each prompt
LENGTHS = [6, 2, 3, 6, 1, 4, 5, 2]               # real completion tokens per row
CHOSEN = [3, 1, 4, 2, 5, 6, 2, 3]                # preference pairs: chosen and rejected lengths
REJECTED = [5, 2, 1, 6, 3, 2, 4, 1]
GROUP_IDS = [7, 3, 5, 7, 3, 5, 7, 3]             # interleaved, unequal sizes (3, 3, 2)
TOK = models.build_tokenizer()
PAD_ID = TOK.pad_token_id
AGG_NORM = "seq-mean-token-sum-norm"


# --- helpers: models, batches, gradients----------------------------------------------------------

@functools.cache
def _models(arch: str) -> SimpleNamespace:
    """Policy, reference (other weights, so KL terms are not 0), critic and reward model."""
    return SimpleNamespace(policy=models.causal_lm(TOK, arch, 0, **SIZES),
                           ref=models.causal_lm(TOK, arch, 1, **SIZES),
                           value=models.value_model(TOK, arch, 2, **SIZES),
                           reward=models.reward_model(TOK, arch, 3, **SIZES))


def _right_padded(gen, lengths, width):
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(3, len(TOK), (len(lengths), width), generator=gen)   # never the pad id
    return ids.masked_fill(mask == 0, PAD_ID), mask


def _prompts(gen):
    mask = (torch.arange(P)[None] >= torch.tensor(LEFT_PAD)[:, None]).long()
    ids = torch.randint(3, len(TOK), (B, P), generator=gen)
    return ids.masked_fill(mask == 0, PAD_ID), mask


def _hand_logp(model, prompt_ids, prompt_mask, ids, mask, temperature=1.0):
    """log pi(y_t | x, y_<t), written from the contract ("Batch"): the position of a token is
    the number of real tokens before it (= clamp(cumsum(mask) - 1, 0) on real tokens)."""
    input_ids = torch.cat([prompt_ids, ids], dim=1)
    attention = torch.cat([prompt_mask, mask], dim=1)
    positions = attention.cumsum(dim=1) - attention
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    width = prompt_ids.shape[1]
    return token_logprobs(logits[:, width - 1:width - 1 + ids.shape[1]] / temperature, ids)


def online_batch(arch="llama", temperature=1.0, seed=0):
    """An online batch; ``old_logp`` is the policy's own at ``temperature`` plus noise (a rollout
    policy a little behind), so ratios differ from 1 and some are clipped."""
    gen = torch.Generator().manual_seed(seed)
    prompt_ids, prompt_mask = _prompts(gen)
    completion_ids, completion_mask = _right_padded(gen, LENGTHS, T)
    with torch.no_grad():
        old = _hand_logp(_models(arch).policy, prompt_ids, prompt_mask, completion_ids,
                         completion_mask, temperature)
    old = old + 0.15 * torch.randn(B, T, generator=gen)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "completion_ids": completion_ids, "completion_mask": completion_mask,
            "old_logp": old, "scores": torch.rand(B, generator=gen),
            "group_ids": torch.tensor(GROUP_IDS), "old_values": torch.randn(B, T, generator=gen)}


def preference_batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    prompt_ids, prompt_mask = _prompts(gen)
    chosen_ids, chosen_mask = _right_padded(gen, CHOSEN, T)
    rejected_ids, rejected_mask = _right_padded(gen, REJECTED, T)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "chosen_ids": chosen_ids, "chosen_mask": chosen_mask,
            "rejected_ids": rejected_ids, "rejected_mask": rejected_mask}


def batch_for(alg, arch="llama", **kw):
    return online_batch(arch, **kw) if alg in recipes.ONLINE else preference_batch()


def extra_padding(batch, left=3, right=2):
    """The same batch with ``left`` more pad columns before the prompts and ``right`` more after
    every completion (pad id, mask 0; 0 in the per-token float tensors)."""
    out = dict(batch)
    out["prompt_ids"] = torch.nn.functional.pad(batch["prompt_ids"], (left, 0), value=PAD_ID)
    out["prompt_mask"] = torch.nn.functional.pad(batch["prompt_mask"], (left, 0), value=0)
    for key in ("completion_ids", "chosen_ids", "rejected_ids"):
        if key in batch:
            out[key] = torch.nn.functional.pad(batch[key], (0, right), value=PAD_ID)
    for key in ("completion_mask", "chosen_mask", "rejected_mask", "old_logp", "old_values"):
        if key in batch:
            out[key] = torch.nn.functional.pad(batch[key], (0, right), value=0)
    return out


def config_for(alg, arch="llama", **overrides):
    if alg == "ppo":
        overrides.setdefault("value_model", _models(arch).value)
    return recipes.default_config(alg, **overrides)


def _trained(alg, arch):
    """The model a recipe trains, and the parameters whose gradients are compared (for ppo the
    value model's too, as the contract keys them)."""
    m = _models(arch)
    if alg == "reward_model":
        return m.reward, list(m.reward.parameters())
    if alg == "ppo":
        return m.policy, list(m.policy.parameters()) + list(m.value.parameters())
    return m.policy, list(m.policy.parameters())


def _flat_grad(params):
    missing = [i for i, p in enumerate(params) if p.grad is None]
    assert not missing, f"parameters {missing} were left without a gradient"
    return torch.cat([p.grad.flatten() for p in params])


def run_recipe(alg, batch, config, arch="llama", micro_weights=None):
    """The recipe's StepLoss and the gradient of its micro-batch losses summed (each first
    multiplied by ``micro_weights[i]``, which is how the mutants below are made)."""
    model, params = _trained(alg, arch)
    ref = None if alg == "reward_model" else _models(arch).ref
    for p in params:
        p.grad = None
    out = recipes.RECIPES[alg](model, ref, batch, config)
    weights = micro_weights or [1.0] * len(out.micro)
    for w, loss in zip(weights, out.micro):
        (w * loss).backward()
    out.loss, out.micro = out.loss.detach(), [m.detach() for m in out.micro]
    return out, _flat_grad(params)


def _hand_values(value_model, batch):
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    ids, mask = batch["completion_ids"], batch["completion_mask"]
    attention = torch.cat([prompt_mask, mask], dim=1)
    out = value_model(input_ids=torch.cat([prompt_ids, ids], dim=1), attention_mask=attention,
                      position_ids=attention.cumsum(dim=1) - attention).logits
    width = prompt_ids.shape[1]
    return out[:, width - 1:width - 1 + ids.shape[1], 0]


def _hand_rm_scores(reward_model, prompt_ids, prompt_mask, ids, mask):
    """transformers' own sequence-classifier read-out (its last non-pad token; no real token is
    the pad id here), an oracle independent of ``recipes.sequence_scores``."""
    attention = torch.cat([prompt_mask, mask], dim=1)
    return reward_model(input_ids=torch.cat([prompt_ids, ids], dim=1), attention_mask=attention,
                        position_ids=attention.cumsum(dim=1) - attention).logits[:, 0]


def hand_loss(alg, batch, config, arch="llama", policy_temperature=None, ref_temperature=None):
    """The contract's table ("Config and recipes") composed on the whole batch. The temperatures
    default to ``config["temperature"]``; passing one alone builds the half-tempered variants."""
    m = _models(arch)
    c = config
    if alg in recipes.PREFERENCE:
        sides = [(batch[f"{s}_ids"], batch[f"{s}_mask"]) for s in ("chosen", "rejected")]
        if alg == "reward_model":
            rc, rr = (_hand_rm_scores(m.reward, batch["prompt_ids"], batch["prompt_mask"], i, k)
                      for i, k in sides)
            return bradley_terry_loss(rc, rr).mean()

        def sums(model):
            return [sequence_logprob(_hand_logp(model, batch["prompt_ids"], batch["prompt_mask"],
                                                i, k), k) for i, k in sides]
        pc, pr = sums(m.policy)
        with torch.no_grad():
            rc, rr = sums(m.ref)
        if alg == "dpo":
            return dpo_loss(pc, pr, rc, rr, c["beta"], c["label_smoothing"]).mean()
        return ipo_loss(pc, pr, rc, rr, c["tau"]).mean()

    t_pol = c["temperature"] if policy_temperature is None else policy_temperature
    t_ref = c["temperature"] if ref_temperature is None else ref_temperature
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
            batch["completion_mask"])
    logp = _hand_logp(m.policy, *args, t_pol)
    with torch.no_grad():
        ref_logp = _hand_logp(m.ref, *args, t_ref)
    old, mask, scores = batch["old_logp"], batch["completion_mask"], batch["scores"]
    agg = (c["agg"], c["norm_len"])
    clip = (c["clip_low"], c["clip_high"], c["dual_clip"])

    if alg in ("grpo", "dr_grpo", "dapo", "rloo"):
        s = scores
        if c["kl_in"] == "reward":
            s = scores - c["beta"] * kl_estimate(old, ref_logp, mask, c["kl_kind"]).sum(dim=1)
        if alg == "rloo":
            A = leave_one_out_advantages(s, batch["group_ids"])
        else:
            A = group_normalized_advantages(s, batch["group_ids"], c["scale"], c["eps"])
        loss = ppo_clip_loss(logp, old, A, mask, *clip, *agg)
        if c["kl_in"] == "loss":
            loss = loss + c["beta"] * aggregate(kl_estimate(logp, ref_logp, mask, c["kl_kind"]),
                                                mask, *agg)
        return loss
    r = kl_penalized_rewards(scores, old, ref_logp, mask, c["beta"], c["kl_kind"])
    if alg == "reinforce_pp":
        A = batch_normalized_advantages(discounted_returns(r, mask, c["gamma"]), mask, c["eps"])
        return ppo_clip_loss(logp, old, A, mask, *clip, *agg)
    A, R = gae(r, batch["old_values"], mask, c["gamma"], c["lam"])
    if c["whiten"]:
        A = batch_normalized_advantages(A, mask)
    V = _hand_values(c["value_model"], batch)
    return (ppo_clip_loss(logp, old, A, mask, *clip, *agg)
            + c["vf_coef"] * value_loss(V, batch["old_values"], R, mask, c["value_clip"], *agg))


def hand_step(alg, batch, config, arch="llama", **temperatures):
    """``hand_loss`` and its gradient over the parameters ``run_recipe`` compares."""
    _, params = _trained(alg, arch)
    for p in params:
        p.grad = None
    loss = hand_loss(alg, batch, config, arch, **temperatures)
    loss.backward()
    return loss.detach(), _flat_grad(params)


def rel_err(actual, expected):
    return float((actual - expected).norm() / expected.norm())


def loss_err(actual, expected):
    actual = float(torch.as_tensor(actual).detach())
    expected = float(torch.as_tensor(expected).detach())
    return abs(actual - expected) / max(abs(expected), LOSS_FLOOR)


def _real_tokens(batch, rows):
    keys = ("completion_mask",) if "completion_mask" in batch else ("chosen_mask", "rejected_mask")
    return int(sum(batch[k][rows].sum() for k in keys))


def _agg_cases():
    """Every (algorithm, agg) pair where agg applies: the online algorithms take each mode (the
    config wins over the name's defaults); preference algorithms take a mean over pairs."""
    return ([(a, agg) for a in recipes.ONLINE for agg in AGG_MODES]
            + [(a, None) for a in recipes.PREFERENCE])


def _config_with_agg(alg, agg, arch="llama", **kw):
    return config_for(alg, arch, **({"agg": agg} if agg else {}), **kw)


# --- 1. gradient accumulation---------------------------------------------------------------------

def _accumulation_errors(alg, agg, mutant=False):
    """(loss error, gradient error) of grad_accum 2 and 4 against 1. With ``mutant``, each micro
    loss is rescaled from its share of the whole batch to 1/k (``N_mb / N`` -> ``1 / k``): the
    token-mean of each micro-batch averaged over micro-batches."""
    batch = batch_for(alg)
    whole, g1 = run_recipe(alg, batch, _config_with_agg(alg, agg, grad_accum=1))
    errors = {}
    for k in (2, 4):
        rows = recipes.micro_slices(B, k)
        counts = [_real_tokens(batch, r) for r in rows]
        assert len(set(counts)) == k, f"micro-batches must hold unequal token counts: {counts}"
        weights = None
        if mutant:
            total = _real_tokens(batch, slice(0, B))
            weights = [(1 / k) / (n / total) for n in counts]
        out, gk = run_recipe(alg, batch, _config_with_agg(alg, agg, grad_accum=k),
                             micro_weights=weights)
        assert len(out.micro) == k
        loss = sum(w * float(m) for w, m in zip(weights or [1.0] * k, out.micro))
        errors[k] = (loss_err(loss, whole.loss), rel_err(gk, g1))
    return errors


@pytest.mark.parametrize("alg,agg", _agg_cases())
def test_grad_accum_2_and_4_give_the_loss_and_gradient_of_grad_accum_1(alg, agg):
    for k, (l_err, g_err) in _accumulation_errors(alg, agg).items():
        assert l_err <= REL, f"{alg}/{agg}, grad_accum={k}: loss error {l_err:.2e}"
        assert g_err <= REL, f"{alg}/{agg}, grad_accum={k}: gradient rel error {g_err:.2e}"


@pytest.mark.parametrize("alg", recipes.ONLINE)
def test_mutant_token_mean_per_micro_batch_averaged_over_micro_batches_is_rejected(alg):
    for k, (_, g_err) in _accumulation_errors(alg, "token-mean", mutant=True).items():
        assert g_err > SEEN, f"{alg}, grad_accum={k}: the mutant passed ({g_err:.2e})"


def test_micro_batch_losses_of_grad_accum_4_sum_to_the_whole_batch_loss_composed_by_hand():
    out, _ = run_recipe("grpo", online_batch(), config_for("grpo", grad_accum=4))
    assert loss_err(out.loss, hand_loss("grpo", online_batch(), config_for("grpo"))) <= REL


# --- 2. the recipe is the contract's table--------------------------------------------------------

TABLE_CASES = [
    ("grpo", {"kl_in": "loss"}), ("grpo", {"kl_in": "reward"}),
    ("grpo", {"agg": "token-mean", "dual_clip": 3.0, "kl_kind": "k2"}),
    ("dr_grpo", {}), ("dapo", {}), ("rloo", {"kl_in": "loss", "agg": "seq-mean-token-mean"}), ("rloo", {}),
    ("reinforce_pp", {}), ("ppo", {}), ("ppo", {"whiten": False, "agg": "seq-mean-token-mean"}),
    ("dpo", {}), ("dpo", {"label_smoothing": 0.1}), ("ipo", {}), ("reward_model", {}),
]


@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("alg,overrides", TABLE_CASES,
                         ids=[f"{a}-{'-'.join(map(str, o.values())) or 'default'}"
                              for a, o in TABLE_CASES])
def test_recipe_equals_the_contract_table_composed_by_hand(alg, overrides, arch):
    batch = batch_for(alg, arch)
    config = config_for(alg, arch, **overrides)
    out, grad = run_recipe(alg, batch, config, arch)
    loss, expected = hand_step(alg, batch, config, arch)
    assert loss_err(out.loss, loss) <= REL, f"loss {float(out.loss)} vs {float(loss)}"
    assert rel_err(grad, expected) <= REL


# --- 3. padding-----------------------------------------------------------------------------------

PAD_CASES = ([("grpo", agg) for agg in AGG_MODES] + [("ppo", "token-mean"), ("ppo", AGG_NORM)]
             + [("dpo", None), ("reward_model", None)])


@pytest.mark.parametrize("arch", models.ARCHS)
@pytest.mark.parametrize("alg,agg", PAD_CASES)
def test_extra_left_and_right_padding_change_nothing(alg, agg, arch):
    """Except for seq-mean-token-sum-norm without norm_len, defined on the padded width: there
    the loss and the gradient scale by T / (T + 2); with a fixed norm_len nothing changes."""
    batch = batch_for(alg, arch)
    padded = extra_padding(batch)
    norm_lens = [None, 10.0] if agg == AGG_NORM else [None]
    for norm_len in norm_lens:
        config = _config_with_agg(alg, agg, arch, **({"norm_len": norm_len} if agg else {}))
        out, grad = run_recipe(alg, batch, config, arch)
        out_p, grad_p = run_recipe(alg, padded, config, arch)
        factor = T / (T + 2) if (agg == AGG_NORM and norm_len is None) else 1.0
        assert loss_err(out_p.loss, factor * out.loss) <= REL, (
            f"norm_len={norm_len}: loss {float(out_p.loss)} vs {factor} * {float(out.loss)}")
        assert rel_err(grad_p, factor * grad) <= REL, f"norm_len={norm_len}: gradient"
        if factor != 1.0:                                    # and the change is there to see
            assert loss_err(out_p.loss, out.loss) > SEEN


def _mutant_logprobs_arange_positions(model, prompt_ids, prompt_mask, completion_ids,
                                      completion_mask, temperature=1.0):
    """completion_logprobs with position_ids = arange (no cumsum): wrong under left padding."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
    width, n = prompt_ids.shape[1], completion_ids.shape[1]
    return token_logprobs(logits[:, width - 1:width - 1 + n] / temperature, completion_ids)


def _logp_padding_change(logprobs, arch):
    """Max change of the real tokens' log-probabilities under extra left and right padding."""
    batch = online_batch(arch)
    padded = extra_padding(batch)
    keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
    model = _models(arch).policy
    with torch.no_grad():
        logp = logprobs(model, *(batch[k] for k in keys))
        logp_p = logprobs(model, *(padded[k] for k in keys))[:, :T]
    real = batch["completion_mask"].bool()
    return float((logp - logp_p)[real].abs().max())


@pytest.mark.parametrize("arch", models.ARCHS)
def test_completion_logprobs_are_unchanged_by_extra_padding(arch):
    assert _logp_padding_change(recipes.completion_logprobs, arch) <= REL


def test_mutant_arange_position_ids_is_rejected_on_the_absolute_position_model():
    assert _logp_padding_change(_mutant_logprobs_arange_positions, "gpt2") > SEEN


# --- 4. temperature-------------------------------------------------------------------------------

@pytest.mark.parametrize("alg,overrides", [("grpo", {"kl_in": "loss", "beta": 0.1}),
                                           ("reinforce_pp", {"beta": 0.1}), ("ppo", {"beta": 0.1})])
def test_temperature_reaches_both_policy_and_reference_logprobs(alg, overrides):
    """The recipe at temperature 0.7 is the composition with both log-probabilities tempered,
    and not one where only the policy's, or only the reference's, is."""
    batch = online_batch(temperature=0.7)
    config = config_for(alg, temperature=0.7, **overrides)
    loss = run_recipe(alg, batch, config)[0].loss
    with torch.no_grad():
        both = hand_loss(alg, batch, config)
        policy_only = hand_loss(alg, batch, config, ref_temperature=1.0)
        ref_only = hand_loss(alg, batch, config, policy_temperature=1.0)
    assert loss_err(loss, both) <= REL, f"{float(loss)} vs {float(both)}"
    assert abs(float(loss - policy_only)) > 1e-4, "the reference's logits were not tempered"
    assert abs(float(loss - ref_only)) > 1e-4, "the policy's logits were not tempered"


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
def test_completion_logprobs_are_log_softmax_of_the_logits_divided_by_temperature(temperature):
    b = online_batch()
    model = _models("llama").policy
    ids = torch.cat([b["prompt_ids"], b["completion_ids"]], dim=1)
    attention = torch.cat([b["prompt_mask"], b["completion_mask"]], dim=1)
    positions = torch.tensor([[max(0, int(attention[r, :j + 1].sum()) - 1) for j in range(P + T)]
                              for r in range(B)])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
        expected = token_logprobs(logits[:, P - 1:P - 1 + T] / temperature, b["completion_ids"])
        logp = recipes.completion_logprobs(model, b["prompt_ids"], b["prompt_mask"],
                                           b["completion_ids"], b["completion_mask"], temperature)
        untempered = token_logprobs(logits[:, P - 1:P - 1 + T], b["completion_ids"])
    real = b["completion_mask"].bool()             # padded entries are left to the recipe
    assert float((logp - expected)[real].abs().max()) <= REL
    if temperature != 1.0:
        assert float((logp - untempered)[real].abs().max()) > SEEN


# --- 5. NaN in old_logp at padded positions-------------------------------------------------------

NAN_CASES = ([(alg, {}) for alg in recipes.ONLINE]
             + [("grpo", {"kl_in": "reward"}), ("rloo", {"kl_in": "loss"})])


def _nan_padding_errors(alg, overrides):
    """(whether the loss and gradient stay finite, loss error, gradient error) when the padded
    positions of ``old_logp`` hold NaN instead of finite values."""
    batch = online_batch()
    poisoned = dict(batch)
    poisoned["old_logp"] = batch["old_logp"].masked_fill(batch["completion_mask"] == 0,
                                                         float("nan"))
    config = config_for(alg, grad_accum=2, **overrides)
    out, grad = run_recipe(alg, batch, config)
    out_n, grad_n = run_recipe(alg, poisoned, config)
    finite = bool(torch.isfinite(out_n.loss)) and bool(torch.isfinite(grad_n).all())
    return finite, loss_err(out_n.loss, out.loss), rel_err(grad_n, grad)


@pytest.mark.parametrize("alg,overrides", NAN_CASES,
                         ids=[f"{a}-{o.get('kl_in', 'default')}" for a, o in NAN_CASES])
def test_nan_in_old_logp_at_padded_positions_changes_nothing(alg, overrides):
    finite, l_err, g_err = _nan_padding_errors(alg, overrides)
    assert finite and l_err <= REL and g_err <= REL, (finite, l_err, g_err)


def _mutant_kl_estimate_times_mask(logp, ref_logp, mask=None, kind="k3"):
    """kl_estimate masked by multiplication: NaN * 0 is NaN."""
    k = kl_estimate(logp, ref_logp, None, kind)
    return k if mask is None else k * mask


def test_mutant_masking_by_multiplication_is_rejected(monkeypatch):
    """The same check on a recipe whose sequence KL (kl_in="reward", read on ``old_logp``)
    multiplies by the mask instead of selecting with it."""
    monkeypatch.setattr(recipes, "kl_estimate", _mutant_kl_estimate_times_mask)
    finite, _, _ = _nan_padding_errors("grpo", {"kl_in": "reward"})
    assert not finite


# --- 6. the KL term-------------------------------------------------------------------------------

def _kl_term_errors(agg, kind, beta=0.1):
    """grpo with kl_in="loss" at beta and at 0: the difference of the losses and of the
    gradients against beta * aggregate(kl_estimate(logp, ref_logp, mask, kind), mask, agg) and
    its gradient. Rounding is relative to what is subtracted: the errors are divided by the
    loss and the gradient at beta (float32: ~1e-7 of those)."""
    batch = online_batch()
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
            batch["completion_mask"])
    m = _models("llama")
    out_0, grad_0 = run_recipe("grpo", batch, config_for("grpo", agg=agg, kl_kind=kind, beta=0.0))
    out_b, grad_b = run_recipe("grpo", batch, config_for("grpo", agg=agg, kl_kind=kind, beta=beta))
    m.policy.zero_grad(set_to_none=True)
    with torch.no_grad():
        ref_logp = _hand_logp(m.ref, *args)
    mask = batch["completion_mask"]
    term = beta * aggregate(kl_estimate(_hand_logp(m.policy, *args), ref_logp, mask, kind), mask,
                            agg)
    term.backward()
    term, grad_term = float(term.detach()), _flat_grad(list(m.policy.parameters()))
    assert abs(term) > 1e-4 and grad_term.norm() > SEEN * grad_b.norm(), "the term is too small"
    l_err = abs(float(out_b.loss - out_0.loss) - term) / max(abs(float(out_b.loss)), LOSS_FLOOR)
    g_err = float(((grad_b - grad_0) - grad_term).norm() / grad_b.norm())
    return l_err, g_err


@pytest.mark.parametrize("kind", ["k1", "k3"])
@pytest.mark.parametrize("agg", AGG_MODES)
def test_beta_positive_minus_beta_zero_is_exactly_the_kl_term(agg, kind):
    """In value and in gradient (with kl_in="loss" the advantages do not depend on beta)."""
    l_err, g_err = _kl_term_errors(agg, kind)
    assert l_err <= REL and g_err <= REL, (l_err, g_err)


def _mutant_kl_estimate_without_gradient(logp, ref_logp, mask=None, kind="k3"):
    """A KL term that is only logged: computed on a detached logp."""
    return kl_estimate(logp.detach(), ref_logp, mask, kind)


def test_mutant_kl_term_without_gradient_is_rejected(monkeypatch):
    monkeypatch.setattr(recipes, "kl_estimate", _mutant_kl_estimate_without_gradient)
    l_err, g_err = _kl_term_errors("token-mean", "k3")
    assert g_err > SEEN, (l_err, g_err)


# --- 7. the reward model's read-out---------------------------------------------------------------

def _score_at_last_column(reward_model, prompt_ids, prompt_mask, ids, mask):
    """Mutant: the classifier at the last column (a right-padded row's padding)."""
    attention = torch.cat([prompt_mask, mask], dim=1)
    hidden = reward_model.base_model(input_ids=torch.cat([prompt_ids, ids], dim=1),
                                     attention_mask=attention,
                                     position_ids=(attention.cumsum(1) - 1).clamp(min=0)
                                     ).last_hidden_state
    return reward_model.score(hidden[:, -1])[:, 0]


def _scores_by_hand(reward_model, batch):
    """score(hidden)[b, P + len_b - 1], the index written from the lengths, one row at a time."""
    attention = torch.cat([batch["prompt_mask"], batch["chosen_mask"]], dim=1)
    hidden = reward_model.base_model(
        input_ids=torch.cat([batch["prompt_ids"], batch["chosen_ids"]], dim=1),
        attention_mask=attention, position_ids=attention.cumsum(1) - attention).last_hidden_state
    return torch.stack([reward_model.score(hidden[b, P + n - 1])[0] for b, n in enumerate(CHOSEN)])


def _score_errors(scores_fn, arch):
    """(error against the hand read-out, change under extra right padding of the completion)."""
    rm = _models(arch).reward
    batch = preference_batch()
    padded = extra_padding(batch, left=0, right=2)
    keys = ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask")
    with torch.no_grad():
        scores = scores_fn(rm, *(batch[k] for k in keys))
        scores_p = scores_fn(rm, *(padded[k] for k in keys))
        by_hand = _scores_by_hand(rm, batch)
    return float((scores - by_hand).abs().max()), float((scores_p - scores).abs().max())


@pytest.mark.parametrize("arch", models.ARCHS)
def test_sequence_scores_read_the_classifier_at_the_last_real_token(arch):
    err, change = _score_errors(recipes.sequence_scores, arch)
    assert err <= REL and change <= REL, (err, change)
    # transformers' own read-out (the last non-pad token) agrees
    rm, b = _models(arch).reward, preference_batch()
    keys = ("prompt_ids", "prompt_mask", "chosen_ids", "chosen_mask")
    with torch.no_grad():
        own = _hand_rm_scores(rm, *(b[k] for k in keys))
        scores = recipes.sequence_scores(rm, *(b[k] for k in keys))
    assert float((scores - own).abs().max()) <= REL


def test_mutant_score_at_the_last_column_is_rejected():
    err, change = _score_errors(_score_at_last_column, "llama")
    assert err > SEEN and change > SEEN, (err, change)


# --- 8. invalid config----------------------------------------------------------------------------

def test_grad_accum_that_does_not_divide_the_batch_is_a_value_error():
    with pytest.raises(ValueError, match="grad_accum"):
        run_recipe("grpo", online_batch(), config_for("grpo", grad_accum=3))
    with pytest.raises(ValueError, match="grad_accum"):
        run_recipe("dpo", preference_batch(), config_for("dpo", grad_accum=3))


@pytest.mark.parametrize("alg", ["grpo", "ppo", "dpo", "reward_model"])
def test_grad_accum_zero_is_a_value_error(alg):
    with pytest.raises(ValueError, match="grad_accum"):
        run_recipe(alg, batch_for(alg), config_for(alg, grad_accum=0))


@pytest.mark.parametrize("alg,key", [("grpo", "clip_low"), ("grpo", "scale"), ("rloo", "kl_in"),
                                     ("reinforce_pp", "gamma"), ("ppo", "value_model"),
                                     ("ppo", "vf_coef"), ("dpo", "beta"), ("ipo", "tau"),
                                     ("reward_model", "grad_accum")])
def test_config_missing_a_key_is_a_value_error_naming_it(alg, key):
    config = config_for(alg)
    run_recipe(alg, batch_for(alg), config)                 # control: the complete config runs
    del config[key]
    with pytest.raises(ValueError, match=key):
        run_recipe(alg, batch_for(alg), config)


def test_default_config_rejects_unknown_keys_and_algorithms():
    with pytest.raises(ValueError, match="clip_ratio"):
        recipes.default_config("grpo", clip_ratio=0.2)
    with pytest.raises(ValueError, match="algorithm"):
        recipes.default_config("grpo_plus")
    assert recipes.default_config("dr_grpo")["scale"] == "none"      # control: known names work


@pytest.mark.parametrize("temperature", [0.0, -0.5])
@pytest.mark.parametrize("alg", recipes.ONLINE)
def test_temperature_not_positive_is_a_value_error(alg, temperature):
    with pytest.raises(ValueError, match="temperature"):
        run_recipe(alg, online_batch(), config_for(alg, temperature=temperature))
    with pytest.raises(ValueError, match="temperature"):
        recipes.completion_logprobs(_models("llama").policy, *(online_batch()[k] for k in (
            "prompt_ids", "prompt_mask", "completion_ids", "completion_mask")), temperature)


def test_batch_missing_a_key_is_a_value_error_naming_it():
    tok = models.build_tokenizer()
    policy = models.causal_lm(tok, "llama", 0, hidden=32, layers=2, heads=2)
    cfg = recipes.default_config("grpo")
    with pytest.raises(ValueError, match=r"batch is missing \['prompt_ids'"):
        recipes.grpo(policy, policy, {}, cfg)
    with pytest.raises(ValueError, match=r"batch is missing \['prompt_ids'"):
        recipes.dpo(policy, policy, {}, recipes.default_config("dpo"))
    with pytest.raises(ValueError, match="grad_accum"):
        recipes.micro_slices(8, True)


def test_ppo_and_reinforce_pp_refuse_the_kl_in_the_loss():
    tok = models.build_tokenizer()
    policy = models.causal_lm(tok, "llama", 0, hidden=32, layers=2, heads=2)
    batch = online_batch()
    for alg in ("ppo", "reinforce_pp"):
        cfg = config_for(alg, kl_in="loss")
        with pytest.raises(ValueError, match=r"config\['kl_in'\] must be 'reward'"):
            recipes.RECIPES[alg](policy, policy, batch, cfg)
