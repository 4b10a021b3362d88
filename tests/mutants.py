"""The mutant zoo: deliberately broken versions of refimpl functions, each modelled on a real bug.

A test that cannot fail is worthless, so every test in this suite is run twice over: once against
refimpl, where it must pass, and once against each mutant it names (``@against(...)`` in
``tests/harness.py``), where it must fail with an assertion. ``tests/test_mutants.py`` checks
that every mutant here is killed by at least one test.

A mutant replaces one function by name (a canonical refimpl function, or one of
``refimpl.tabular``'s baselines); everything else stays refimpl's. The installed package never
imports this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import refimpl
from refimpl import _checks, tabular
from refimpl.aggregation import aggregate
from refimpl.policy_loss import _token_inputs


@dataclass(frozen=True)
class Mutant:
    name: str
    replaces: str
    fn: Callable
    bug: str


MUTANTS: dict[str, Mutant] = {}


def mutant(replaces: str, bug: str):
    def register(fn):
        MUTANTS[fn.__name__] = Mutant(fn.__name__, replaces, fn, bug)
        return fn
    return register


def _zero_pad(x, m):
    return torch.where(m, x, torch.zeros_like(x))


# --- returns and GAE -----------------------------------------------------------------------------

def _gae_variant(rewards, values, mask, gamma=1.0, lam=0.95, *, next_value="next", forward=False,
                 returns_add_v=True, read_padding=False):
    m = _checks.bool_mask(mask, rewards.shape)
    _checks.unit_interval("gamma", gamma)
    _checks.unit_interval("lam", lam)
    r = rewards if read_padding else _zero_pad(rewards, m)
    V = values if read_padding else _zero_pad(values, m)
    B, T = r.shape
    A = [None] * T
    order = range(T) if forward else reversed(range(T))
    carry = torch.zeros_like(r[:, 0])
    for t in order:
        if next_value == "same":
            v_next = V[:, t]
        elif read_padding:
            v_next = V[:, t + 1] if t + 1 < T else torch.zeros_like(r[:, 0])
        else:
            v_next = _zero_pad(V[:, t + 1], m[:, t + 1]) if t + 1 < T else torch.zeros_like(r[:, 0])
        delta = r[:, t] + gamma * v_next - V[:, t]
        a = delta + gamma * lam * carry
        a = torch.where(m[:, t], a, torch.zeros_like(a))
        A[t] = a
        carry = a
    A = torch.stack(A, 1)
    ret = _zero_pad(A + V, m) if returns_add_v else A
    return A, ret


@mutant("gae", "bootstraps from V[t+1] even after the last real token, reading the padding")
def gae_bootstraps_past_last_token(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_variant(rewards, values, mask, gamma, lam, read_padding=True)


@mutant("gae", "off-by-one bootstrap: delta_t = r_t + gamma V(s_t) - V(s_t)")
def gae_off_by_one_bootstrap(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_variant(rewards, values, mask, gamma, lam, next_value="same")


@mutant("gae", "accumulates advantages forward in time instead of backward")
def gae_forward_accumulation(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_variant(rewards, values, mask, gamma, lam, forward=True)


@mutant("gae", "returns = advantages, forgetting to add V back")
def gae_returns_without_value(rewards, values, mask, gamma=1.0, lam=0.95):
    return _gae_variant(rewards, values, mask, gamma, lam, returns_add_v=False)


@mutant("gae", "lambda and gamma swapped in the recurrence (lam is the discount of delta)")
def gae_gamma_lam_swapped(rewards, values, mask, gamma=1.0, lam=0.95):
    return refimpl.gae(rewards, values, mask, gamma=lam, lam=gamma)


@mutant("gae", "accepts lam outside [0, 1] without complaint")
def gae_accepts_any_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    return refimpl.gae(rewards, values, mask, gamma=gamma, lam=min(max(lam, 0.0), 1.0))


@mutant("discounted_returns", "accumulates the return forward in time (G_t = r_t + gamma G_{t-1})")
def returns_forward_in_time(rewards, mask, gamma=1.0):
    m = _checks.bool_mask(mask, rewards.shape)
    r = _zero_pad(rewards, m)
    out, G = [], torch.zeros_like(r[:, 0])
    for t in range(r.shape[1]):
        G = r[:, t] + gamma * G
        out.append(torch.where(m[:, t], G, torch.zeros_like(G)))
    return torch.stack(out, 1)


@mutant("discounted_returns", "float32 input accumulated in bfloat16 (an autocast-style "
        "low-precision path), result cast back")
def returns_accumulate_in_bfloat16(rewards, mask, gamma=1.0):
    if rewards.dtype != torch.float32:
        return refimpl.discounted_returns(rewards, mask, gamma)
    return refimpl.discounted_returns(rewards.to(torch.bfloat16), mask, gamma).to(rewards.dtype)


@mutant("discounted_returns", "returns float32 whatever the input dtype")
def returns_cast_to_float32(rewards, mask, gamma=1.0):
    return refimpl.discounted_returns(rewards, mask, gamma).float()


# --- group advantages ----------------------------------------------------------------------------

def _group_stats(scores, group_ids):
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = counts.to(scores.dtype)
    mean = torch.zeros(len(counts), dtype=scores.dtype).index_add(0, inv, scores) / n
    c = scores - mean[inv]
    ss = torch.zeros(len(counts), dtype=scores.dtype).index_add(0, inv, c ** 2)
    return inv, n, mean, c, ss


@mutant("group_normalized_advantages", "std with divisor n (population std) instead of n - 1")
def group_std_biased(scores, group_ids, scale="group", eps=1e-6):
    if scale != "group":
        return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    inv, n, mean, c, ss = _group_stats(scores, group_ids)
    return c / ((ss / n).sqrt()[inv] + eps)


@mutant("group_normalized_advantages", "scale='group' divides by the batch std")
def group_std_over_batch(scores, group_ids, scale="group", eps=1e-6):
    if scale == "group":
        scale = "batch"
    return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)


@mutant("group_normalized_advantages", "scale='batch' uses the std of the centred values")
def batch_scale_std_of_centred(scores, group_ids, scale="group", eps=1e-6):
    if scale != "batch":
        return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    c = refimpl.group_normalized_advantages(scores, group_ids, "none")
    return c / (c.std() + eps)


@mutant("group_normalized_advantages", "groups taken as consecutive blocks (reshape to (-1, G)), "
        "ignoring the ids")
def group_assumes_contiguous(scores, group_ids, scale="group", eps=1e-6):
    n_groups = len(torch.unique(group_ids))
    G = scores.shape[0] // n_groups
    blocks = torch.arange(scores.shape[0]) // G
    return refimpl.group_normalized_advantages(scores, blocks, scale, eps)


@mutant("group_normalized_advantages", "forgets to subtract the group mean")
def group_mean_not_subtracted(scores, group_ids, scale="group", eps=1e-6):
    out = refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    if scale == "none":
        return scores
    inv, n, mean, c, ss = _group_stats(scores, group_ids)
    return out + mean[inv] / ((ss / (n - 1)).sqrt()[inv] + eps)


@mutant("group_normalized_advantages", "divides by the variance instead of the std")
def group_divides_by_variance(scores, group_ids, scale="group", eps=1e-6):
    if scale != "group":
        return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)
    inv, n, mean, c, ss = _group_stats(scores, group_ids)
    return c / ((ss / (n - 1))[inv] + eps)


@mutant("group_normalized_advantages", "scale='none' excludes the sample from the mean (RLOO's "
        "baseline under Dr. GRPO's name)")
def group_none_excludes_self(scores, group_ids, scale="group", eps=1e-6):
    if scale == "none":
        return refimpl.leave_one_out_advantages(scores, group_ids)
    return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)


@mutant("group_normalized_advantages", "a group of one silently gets advantage 0")
def group_accepts_singleton(scores, group_ids, scale="group", eps=1e-6):
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        return torch.zeros_like(scores)
    return refimpl.group_normalized_advantages(scores, group_ids, scale, eps)


@mutant("leave_one_out_advantages", "the baseline includes the sample itself (a group mean)")
def loo_includes_self(scores, group_ids):
    return refimpl.group_normalized_advantages(scores, group_ids, scale="none")


@mutant("leave_one_out_advantages", "the sum of the others is divided by G instead of G - 1")
def loo_divides_by_group_size(scores, group_ids):
    inv, n, mean, c, ss = _group_stats(scores, group_ids)
    total = (mean * n)[inv]
    return scores - (total - scores) / n[inv]


# --- whitening -----------------------------------------------------------------------------------

@mutant("batch_normalized_advantages", "mean and variance taken over every entry, padding included")
def whiten_reads_padding(advantages, mask=None, eps=1e-8):
    if mask is None:
        return refimpl.batch_normalized_advantages(advantages, None, eps)
    m = _checks.bool_mask(mask, advantages.shape)
    mu, var = advantages.mean(), advantages.var()
    return _zero_pad((advantages - mu) * torch.rsqrt(var + eps), m)


@mutant("batch_normalized_advantages", "variance with divisor n instead of n - 1")
def whiten_biased_var(advantages, mask=None, eps=1e-8):
    m = torch.ones_like(advantages, dtype=torch.bool) if mask is None else _checks.bool_mask(
        mask, advantages.shape)
    A = _zero_pad(advantages, m)
    n = m.sum()
    mu = A.sum() / n
    var = _zero_pad((A - mu) ** 2, m).sum() / n
    return _zero_pad((A - mu) * torch.rsqrt(var + eps), m)


@mutant("batch_normalized_advantages", "whitens its input in place (advantages.sub_(mean))")
def whiten_in_place(advantages, mask=None, eps=1e-8):
    out = refimpl.batch_normalized_advantages(advantages, mask, eps)
    with torch.no_grad():
        advantages.copy_(out)
    return out


# --- KL ------------------------------------------------------------------------------------------

@mutant("kl_estimate", "k3 with the ratio upside down: exp(l) - 1 - l")
def k3_ratio_inverted(logp, ref_logp, mask=None, kind="k3"):
    if kind != "k3":
        return refimpl.kl_estimate(logp, ref_logp, mask, kind)
    return refimpl.kl_estimate(ref_logp, logp, mask, "k3")


@mutant("kl_estimate", "k3 with the sign of the log term flipped: exp(-l) - 1 - l")
def k3_log_sign_flipped(logp, ref_logp, mask=None, kind="k3"):
    if kind != "k3":
        return refimpl.kl_estimate(logp, ref_logp, mask, kind)
    k1 = refimpl.kl_estimate(logp, ref_logp, mask, "k1")
    return refimpl.kl_estimate(logp, ref_logp, mask, "k3") - 2 * k1


@mutant("kl_estimate", "k2 without the 1/2: l**2")
def k2_missing_half(logp, ref_logp, mask=None, kind="k3"):
    out = refimpl.kl_estimate(logp, ref_logp, mask, kind)
    return 2 * out if kind == "k2" else out


@mutant("kl_estimate", "k1 as ref_logp - logp (the KL ratio inverted)")
def k1_ratio_inverted(logp, ref_logp, mask=None, kind="k3"):
    if kind != "k1":
        return refimpl.kl_estimate(logp, ref_logp, mask, kind)
    return refimpl.kl_estimate(ref_logp, logp, mask, "k1")


@mutant("kl_estimate", "computes exp(-l) on raw inputs and masks afterwards (NaN gradients leak)")
def kl_masks_after_exp(logp, ref_logp, mask=None, kind="k3"):
    l = logp - ref_logp
    k = {"k1": l, "k2": 0.5 * l ** 2, "k3": torch.exp(-l) - 1 + l}[kind]
    if mask is None:
        return k
    m = _checks.bool_mask(mask, logp.shape)
    return _zero_pad(k, m)


@mutant("kl_estimate", "returns float32 whatever the input dtype")
def kl_casts_to_float32(logp, ref_logp, mask=None, kind="k3"):
    return refimpl.kl_estimate(logp, ref_logp, mask, kind).float()


@mutant("kl_penalized_rewards", "adds the score at the padded end (column T-1), not at the last "
        "real token")
def score_at_padded_end(scores, logp, ref_logp, mask, beta, kind="k1"):
    m = _checks.bool_mask(mask, logp.shape)
    r = -beta * refimpl.kl_estimate(logp, ref_logp, m, kind)
    r = r.clone()
    r[:, -1] = r[:, -1] + scores
    return r


@mutant("kl_penalized_rewards", "adds the KL instead of subtracting it (+beta * k)")
def kl_reward_sign_flipped(scores, logp, ref_logp, mask, beta, kind="k1"):
    shaped = refimpl.kl_penalized_rewards(scores, logp, ref_logp, mask, 0.0, kind)
    return shaped + beta * refimpl.kl_estimate(logp, ref_logp, mask, kind)


# --- aggregation and losses ----------------------------------------------------------------------

@mutant("aggregate", "masks by multiplication (values * mask), so NaN at padding reaches the loss")
def aggregate_multiplies_by_mask(values, mask, mode="token-mean", norm_len=None):
    m = _checks.bool_mask(mask, values.shape)
    return _mul_agg(values, m, mode, norm_len)


def _mul_agg(values, m, mode, norm_len):
    x = values * m.to(values.dtype)
    lengths = m.sum(1).to(values.dtype)
    if mode == "token-mean":
        return x.sum() / lengths.sum()
    if mode == "seq-mean-token-mean":
        return (x.sum(1) / lengths).mean()
    if mode == "seq-mean-token-sum":
        return x.sum(1).mean()
    return x.sum() / (x.shape[0] * (x.shape[1] if norm_len is None else norm_len))


@mutant("aggregate", "token-mean divides by the padded size B*T instead of the real-token count")
def token_mean_divides_by_padded_size(values, mask, mode="token-mean", norm_len=None):
    if mode != "token-mean":
        return aggregate(values, mask, mode, norm_len)
    m = _checks.bool_mask(mask, values.shape)
    return _zero_pad(values, m).sum() / values.numel()


@mutant("aggregate", "seq-mean-token-sum-norm normalises by the longest real row, not by T")
def sum_norm_uses_longest_row(values, mask, mode="token-mean", norm_len=None):
    if mode != "seq-mean-token-sum-norm" or norm_len is not None:
        return aggregate(values, mask, mode, norm_len)
    m = _checks.bool_mask(mask, values.shape)
    return aggregate(values, mask, mode, float(m.sum(1).max()))


@mutant("aggregate", "does not check that the mask is a prefix of each row")
def aggregate_accepts_holes(values, mask, mode="token-mean", norm_len=None):
    m = mask.bool()
    x = _zero_pad(values, m)
    if mode == "token-mean":
        return x.sum() / m.sum()
    return aggregate(values, torch.ones_like(m), mode, norm_len)


@mutant("policy_gradient_loss", "sign flipped: loss = +A * logp")
def pg_sign_flipped(logp, advantages, mask, agg="token-mean", norm_len=None):
    return -refimpl.policy_gradient_loss(logp, advantages, mask, agg, norm_len)


@mutant("policy_gradient_loss", "ignores agg and always takes the token mean")
def pg_ignores_agg(logp, advantages, mask, agg="token-mean", norm_len=None):
    _checks.one_of("agg", agg, refimpl.aggregation.AGG_MODES)
    return refimpl.policy_gradient_loss(logp, advantages, mask, "token-mean")


def _ppo_variant(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=None, dual_clip=None,
                 agg="token-mean", norm_len=None, *, swap=False, ignore_high=False,
                 dual_everywhere=False, dual_max=False, inverted_ratio=False,
                 check_dual=True):
    m, x = _token_inputs(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    if check_dual and dual_clip is not None and dual_clip <= 1:
        raise ValueError("dual_clip must be > 1")
    ch = clip_low if (clip_high is None or ignore_high) else clip_high
    A = x["advantages"]
    d = x["old_logp"] - x["logp"] if inverted_ratio else x["logp"] - x["old_logp"]
    r = torch.exp(d)
    u, c = -A * r, -A * torch.clamp(r, 1 - clip_low, 1 + ch)
    loss = torch.minimum(u, c) if swap else torch.maximum(u, c)
    if dual_clip is not None:
        floor = -dual_clip * A
        capped = torch.maximum(loss, floor) if dual_max else torch.minimum(loss, floor)
        loss = capped if dual_everywhere else torch.where(A < 0, capped, loss)
    return aggregate(loss, m, agg, norm_len)


@mutant("ppo_clip_loss", "min and max swapped (optimistic instead of pessimistic bound)")
def ppo_min_max_swapped(*args, **kw):
    return _ppo_variant(*args, **kw, swap=True)


@mutant("ppo_clip_loss", "clip_high ignored: clip_low used on both sides")
def ppo_clip_high_ignored(*args, **kw):
    return _ppo_variant(*args, **kw, ignore_high=True)


@mutant("ppo_clip_loss", "the dual-clip floor applied to positive advantages too")
def ppo_dual_clip_on_positive_advantages(*args, **kw):
    return _ppo_variant(*args, **kw, dual_everywhere=True)


@mutant("ppo_clip_loss", "dual clip takes max instead of min")
def ppo_dual_clip_max(*args, **kw):
    return _ppo_variant(*args, **kw, dual_max=True)


@mutant("ppo_clip_loss", "ratio upside down: exp(old_logp - logp)")
def ppo_ratio_inverted(*args, **kw):
    return _ppo_variant(*args, **kw, inverted_ratio=True)


@mutant("ppo_clip_loss", "accepts dual_clip <= 1 without complaint")
def ppo_accepts_dual_clip_le_one(*args, **kw):
    return _ppo_variant(*args, **kw, check_dual=False)


@mutant("value_loss", "clipped value loss takes min instead of max")
def value_clip_min(values, old_values, returns, mask, clip=None, agg="token-mean", norm_len=None):
    m, x = _token_inputs(mask, values=values, old_values=old_values, returns=returns)
    V, Vo, R = x["values"], x["old_values"], x["returns"]
    loss = (V - R) ** 2
    if clip is not None:
        loss = torch.minimum(loss, (Vo + torch.clamp(V - Vo, -clip, clip) - R) ** 2)
    return aggregate(0.5 * loss, m, agg, norm_len)


@mutant("value_loss", "no factor 1/2: (V - R)^2")
def value_loss_no_half(values, old_values, returns, mask, clip=None, agg="token-mean",
                       norm_len=None):
    return 2 * refimpl.value_loss(values, old_values, returns, mask, clip, agg, norm_len)


# --- preferences ---------------------------------------------------------------------------------

@mutant("dpo_loss", "label smoothing swapped: -ls log sigmoid(z) - (1 - ls) log sigmoid(-z)")
def dpo_smoothing_swapped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    return refimpl.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, beta, 1.0 - label_smoothing)


@mutant("dpo_loss", "forgets the reference model: z = beta (pc - pr)")
def dpo_ignores_reference(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                          ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    return refimpl.dpo_loss(policy_chosen_logps, policy_rejected_logps,
                            torch.zeros_like(ref_chosen_logps), torch.zeros_like(ref_rejected_logps),
                            beta, label_smoothing)


@mutant("dpo_loss", "chosen and rejected swapped (the sign of z flipped)")
def dpo_sign_flipped(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                     ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    return refimpl.dpo_loss(policy_rejected_logps, policy_chosen_logps, ref_rejected_logps,
                            ref_chosen_logps, beta, label_smoothing)


@mutant("dpo_loss", "accepts beta <= 0 without complaint")
def dpo_accepts_nonpositive_beta(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                 ref_rejected_logps, beta=0.1, label_smoothing=0.0):
    if beta <= 0:
        h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
        return -F.logsigmoid(beta * h)
    return refimpl.dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, beta, label_smoothing)


@mutant("ipo_loss", "target 1/tau instead of 1/(2 tau)")
def ipo_tau_not_halved(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                       ref_rejected_logps, tau=0.1):
    return refimpl.ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                            ref_rejected_logps, tau / 2)


@mutant("bradley_terry_loss", "margin added instead of subtracted")
def bt_margin_sign(chosen_rewards, rejected_rewards, margin=None):
    if margin is None:
        return refimpl.bradley_terry_loss(chosen_rewards, rejected_rewards)
    return refimpl.bradley_terry_loss(chosen_rewards, rejected_rewards, -margin)


@mutant("bradley_terry_loss", "chosen and rejected swapped")
def bt_sign_flipped(chosen_rewards, rejected_rewards, margin=None):
    return refimpl.bradley_terry_loss(rejected_rewards, chosen_rewards, margin)


# --- log-probabilities ---------------------------------------------------------------------------

@mutant("token_logprobs", "log_softmax over the wrong axis (time instead of vocabulary)")
def logprobs_softmax_over_time(logits, tokens):
    lp = torch.log_softmax(logits, dim=1)
    return lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@mutant("sequence_logprob", "sums every entry, padding included")
def seq_logprob_reads_padding(token_logp, mask):
    _checks.bool_mask(mask, token_logp.shape)
    return token_logp.sum(dim=1)


# --- the tabular baselines -----------------------------------------------------------------------

@mutant("baseline_constant", "a running-mean baseline updated with the current sample before "
        "it is subtracted")
def constant_baseline_updated_with_sample(R, b):
    n_before = 3.0
    return R - (n_before * b + R) / (n_before + 1)


@mutant("baseline_value", "baseline read at the next state V(s_{t+1}), which depends on the action")
def value_baseline_reads_next_state(returns, values):
    nxt = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    return returns - nxt


# The tabular baselines are looked up through the harness's subject, like refimpl functions.
BASELINE_NAMES = tuple(n for n in tabular.__all__ if n.startswith("baseline_"))


# --- generic mutants, made for any canonical function: ``<function>~<bug>`` -------------------------

def _first_float(args):
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return i
    return None


def _map_out(out, f):
    return tuple(f(o) for o in out) if isinstance(out, tuple) else f(out)


def _generic(fn_name: str, bug: str):
    ref = getattr(refimpl, fn_name)

    def in_place(*args, **kwargs):
        out = ref(*args, **kwargs)
        i = _first_float(args)
        with torch.no_grad():
            args[i].mul_(-1.0).add_(0.5)
        return out

    def float32_out(*args, **kwargs):
        return _map_out(ref(*args, **kwargs), lambda o: o.float())

    def _padded_sum(args):
        mask = next((a for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.bool), None)
        total = 0.0
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and mask is not None \
                    and a.shape == mask.shape:
                total = total + torch.where(mask, torch.zeros_like(a), a).sum()
        return total

    def nan_through_mask(*args, **kwargs):
        out = ref(*args, **kwargs)
        leak = _padded_sum(args)
        return _map_out(out, lambda o: o + 0.0 * leak)              # NaN * 0 = NaN; 1e30 * 0 = 0

    def reads_padding(*args, **kwargs):
        out = ref(*args, **kwargs)
        leak = _padded_sum(args)
        return _map_out(out, lambda o: o + 1e-40 * leak)

    def detached(*args, **kwargs):
        args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        return ref(*args, **kwargs)

    def swallows_errors(*args, **kwargs):
        try:
            return ref(*args, **kwargs)
        except ValueError:
            return torch.zeros(())

    def scaled(*args, **kwargs):
        return _map_out(ref(*args, **kwargs), lambda o: 1.01 * o)

    return {"in_place": in_place, "float32_out": float32_out, "nan_through_mask": nan_through_mask,
            "reads_padding": reads_padding, "detached": detached,
            "swallows_errors": swallows_errors, "scaled": scaled}[bug]


GENERIC_BUGS = {
    "in_place": "modifies its first float input in place",
    "float32_out": "returns float32 whatever the input dtype",
    "nan_through_mask": "masks by multiplication: NaN or inf at padding reaches the output",
    "reads_padding": "padded values reach the output (finite garbage too)",
    "detached": "inputs detached: no gradient flows",
    "swallows_errors": "invalid input answered with a silent 0 instead of a ValueError",
    "scaled": "output off by 1%",
}


def get(name: str) -> Mutant:
    """A mutant by name: one of ``MUTANTS``, or a generic ``<function>~<bug>``."""
    if name in MUTANTS:
        return MUTANTS[name]
    fn_name, _, bug = name.partition("~")
    if bug not in GENERIC_BUGS or not hasattr(refimpl, fn_name):
        raise KeyError(f"unknown mutant {name!r}")
    return Mutant(name, fn_name, _generic(fn_name, bug), GENERIC_BUGS[bug])


def adapter(name: str):
    """refimpl as an adapter, with the one function the mutant breaks replaced by it."""
    from conformance.adapters.reference import RefimplAdapter

    mt = get(name)
    cls = type(f"Mutant_{name.replace('~', '_')}", (RefimplAdapter,),
               {"name": "mutant-" + name.replace("~", "-"), mt.replaces: staticmethod(mt.fn)})
    return cls()
