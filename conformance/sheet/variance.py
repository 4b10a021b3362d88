"""The variance-reduction table, every cell recomputed exactly: the bias and the variance of each
baseline's REINFORCE gradient, by enumerating every group of samples of a tabular policy.

The estimator of a group of G samples of one prompt is g = -(1/G) sum_i A_i grad log pi(y_i), A_i
the baseline's advantage. Its exact mean E[g] and total variance E||g - E[g]||^2 are finite sums
over every multiset of G responses (``TabularPolicy.tuples``) with its multinomial weight. Bias is
measured against the gradient the estimator should follow: grad J for the unnormalised
baselines, grad J / sigma (sigma: the reward's standard deviation under pi) for the normalised
ones. Expectations are checked against oracles computed another way: the effective-reward oracle
of a normalised baseline in numpy (a(c) = E[A_1 | y_1 = c], enumerated over the other samples),
and the closed form of the variance without a baseline.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import torch

from refimpl.tabular import cosine
from conformance.sheet.common import (
    DTYPE, canonical, code_link, moments, per_row_gradients, policy, scores_for, token_jacobian,
)
from conformance.sheet.ledger import Ledger, sig

G_TABLE = 4
GROUP_SIZES = list(range(2, 9))
BATCH_SIZES = list(range(2, 6))


def effective_reward(probs: np.ndarray, values: np.ndarray, N: int, advantage) -> np.ndarray:
    """numpy oracle: a(o) = E[A_1 | y_1 = o], the other N - 1 samples i.i.d. from ``probs``."""
    O = len(values)
    a = np.zeros(O)
    for multiset in itertools.combinations_with_replacement(range(O), N - 1):
        counts = np.bincount(np.array(multiset, dtype=int), minlength=O)
        weight = math.factorial(N - 1) / np.prod([math.factorial(int(k)) for k in counts])
        weight *= np.prod(probs[list(multiset)])
        rows = np.concatenate([values[:, None], np.tile(values[list(multiset)], (O, 1))], axis=1)
        a += weight * advantage(rows)[:, 0]
    return a


def grpo_np(rows, eps=1e-6):
    """GRPO's advantage in numpy, rows (M, N): (R - mean) / (sample std + eps)."""
    return (rows - rows.mean(1, keepdims=True)) / (rows.std(1, ddof=1, keepdims=True) + eps)


def whiten_np(rows, eps=1e-8):
    """Whitening in numpy, rows (M, N): (R - mean) / sqrt(sample variance + eps)."""
    return (rows - rows.mean(1, keepdims=True)) / np.sqrt(rows.var(1, ddof=1, keepdims=True) + eps)


class Setup:
    def __init__(self):
        self.pol = policy()
        self.scores = scores_for(self.pol)
        self.rewards = self.pol.scores_to_rewards(self.scores)
        self.grad_J = self.pol.grad_J(self.rewards).flatten()
        self.jac = token_jacobian(self.pol)
        ideal = self.pol.ideal_normalized_gradient
        self.ideal_group = ideal(self.scores, per_prompt=True).flatten()
        self.ideal_global = ideal(self.scores, per_prompt=False).flatten()
        self._batches: dict[int, tuple] = {}

    def group(self, G: int, fn):
        """(mean, variance) of a per-group estimator ``fn(scores, ids)`` over every G-multiset."""
        tup = self.pol.tuples(G)
        R = self.scores[tup.prompt, tup.completion]
        ids = torch.arange(len(tup)).repeat_interleave(G)
        A = fn(R.flatten(), ids).reshape(R.shape)
        return moments(self.pol, tup, per_row_gradients(self.pol, tup, A, self.jac))

    def batch(self, N: int):
        """REINFORCE++'s whitening over a batch of N independent (prompt, response) draws (one
        refimpl call per batch: whitening is over the whole batch; computed once per N)."""
        if N not in self._batches:
            self._batches[N] = self._batch(N)
        return self._batches[N]

    def _batch(self, N: int):
        tup = self.pol.tuples(N, same_prompt=False)
        R = self.scores[tup.prompt, tup.completion]
        m = torch.ones(1, N, dtype=torch.bool)
        whiten = canonical("batch_normalized_advantages")
        A = torch.cat([whiten(R[k:k + 1], m, 1e-8) for k in range(len(tup))])
        return moments(self.pol, tup, per_row_gradients(self.pol, tup, A, self.jac))

    def tokens(self, G: int, advantage_of):
        """(mean, variance) with a per-token advantage
        ``advantage_of(token rewards, mask) -> (K*G, L)``."""
        tup = self.pol.tuples(G)
        L = self.pol.tree.max_len
        r = self.pol.token_rewards(self.rewards)[tup.prompt, tup.completion].reshape(-1, L)
        m = self.pol.mask[tup.completion].reshape(-1, L)
        A = advantage_of(tup, r, m).reshape(len(tup), G, L)
        return moments(self.pol, tup, per_row_gradients(self.pol, tup, A, self.jac))

    def ordered(self, G: int, hand, kind: str = "group"):
        """(mean, variance) again, over every *ordered* tuple (weights: products of
        probabilities, no multinomial counts) with the advantage ``hand`` written out by hand:
        ``hand(R (K, G)) -> (K, G)`` for ``kind`` "group" and "batch" (independent draws), or
        ``hand(token rewards (K, G, L), V along (K, G, L), mask) -> (K, G, L)`` for "tokens"."""
        pol = self.pol
        tup = pol.tuples(G, same_prompt=kind != "batch", ordered=True)
        if kind == "tokens":
            r = pol.token_rewards(self.rewards)[tup.prompt, tup.completion]
            m = pol.mask[tup.completion]
            A = hand(r, tup, m)
        else:
            A = hand(self.scores[tup.prompt, tup.completion])
        return moments(pol, tup, per_row_gradients(pol, tup, A, self.jac))

    def hand_value(self, Vtab):
        """G_t - V(s_t) by hand: the reward-to-go as a reversed cumulative sum (gamma = 1)."""
        def adv(r, tup, m):
            togo = r.flip(-1).cumsum(-1).flip(-1)
            return torch.where(m, togo - self.pol.along(Vtab)[tup.prompt, tup.completion], 0.0)
        return adv

    def hand_gae(self, Vtab, lam: float):
        """GAE by hand: A_t = delta_t + lam A_{t+1}, V = 0 after the last token (gamma = 1)."""
        def adv(r, tup, m):
            v = torch.where(m, self.pol.along(Vtab)[tup.prompt, tup.completion], 0.0)
            A = torch.zeros_like(r)
            nxt_v = torch.zeros_like(r[..., 0])
            nxt_a = torch.zeros_like(r[..., 0])
            for t in reversed(range(r.shape[-1])):
                delta = r[..., t] + nxt_v - v[..., t]
                A[..., t] = torch.where(m[..., t], delta + lam * nxt_a, 0.0)
                nxt_v, nxt_a = v[..., t], A[..., t]
            return A
        return adv

    def gae_oracle(self, Vtab, lam: float) -> torch.Tensor:
        """E[g] of GAE by the tower rule: sum over (s, a) of P(reach) E[A | s, a] grad log pi(a|s),
        with E[A | s, a] enumerated by ``conditional_on_transition``."""
        pol = self.pol
        L = pol.tree.max_len
        r = pol.token_rewards(self.rewards).reshape(-1, L)
        v = pol.along(Vtab).reshape(-1, L)
        m = pol.mask.repeat(pol.n_prompts, 1)
        A = canonical("gae")(r, v, m, 1.0, lam)[0].reshape(pol.n_prompts, -1, L)
        e, reach = pol.conditional_on_transition(A)
        w = pol.prompt_weights[:, None, None]
        return pol.grad((w * reach * e * pol.log_pi()).sum()).flatten()

    def oracle(self, G: int, per_prompt: bool, advantage) -> torch.Tensor:
        pol = self.pol
        if per_prompt:
            probs = pol.probs().detach().numpy()
            a = torch.tensor(np.stack([
                effective_reward(probs[p], self.scores[p].numpy(), G, advantage)
                for p in range(pol.n_prompts)]))
            return pol.grad((pol.prompt_weights * (pol.probs() * a).sum(1)).sum()).flatten()
        q = (pol.prompt_weights.unsqueeze(1) * pol.probs().detach()).flatten().numpy()
        a = torch.tensor(effective_reward(q, self.scores.flatten().numpy(), G, advantage))
        joint = pol.prompt_weights.unsqueeze(1) * pol.probs()
        return pol.grad((joint.flatten() * a).sum()).flatten()

    def no_baseline_variance(self, G: int) -> float:
        """Closed form: within-prompt variance / G plus the variance of the prompt's mean."""
        pol = self.pol
        p = pol.probs().detach()
        w = pol.prompt_weights
        jac_seq = self.jac.sum(dim=2)                               # (P, C, D)
        score_norm2 = (jac_seq ** 2).sum(-1)                         # ||grad log pi(y|x)||^2
        s2 = (p * self.scores ** 2 * score_norm2).sum(1)             # E[||R grad log pi||^2 | x]
        m = torch.stack([(p[x].unsqueeze(1) * self.scores[x].unsqueeze(1) * jac_seq[x]).sum(0)
                         for x in range(pol.n_prompts)])             # E[R grad log pi | x]
        mn2 = (m ** 2).sum(1)
        total = (w * m.T).T.sum(0)
        return float((w * ((s2 - mn2) / G + mn2)).sum() - (total ** 2).sum())


def _formulas(led: Ledger) -> str:
    """The leave-one-out and whitened advantages of one small batch against the formulas by hand."""
    group = [1.0, 0.0, 0.0, 1.0, 1.0]
    G = len(group)
    t = torch.tensor(group, dtype=DTYPE)
    loo = canonical("leave_one_out_advantages")(t, torch.zeros(G, dtype=torch.long))
    want = [r - (sum(group) - r) / (G - 1) for r in group]
    err_loo = max(abs(float(a) - b) for a, b in zip(loo, want))
    white = canonical("batch_normalized_advantages")(t.unsqueeze(0), None, 1e-8)[0]
    mean, var = statistics.fmean(group), statistics.variance(group)
    want_w = [(r - mean) / math.sqrt(var + 1e-8) for r in group]
    err_w = max(abs(float(a) - b) for a, b in zip(white, want_w))
    return (f"On the rewards {[int(r) for r in group]}: leave-one-out gives "
            f"{led.value('leave-one-out advantage of a 1', float(loo[0]), want[0], 1e-12)} to a 1 "
            "and "
            f"{led.value('leave-one-out advantage of a 0', float(loo[1]), want[1], 1e-12)} to a "
            f"0 (R_i − Σ_(j≠i) R_j / (G − 1) by hand: max difference "
            f"{led.bound('leave-one-out against the hand formula', err_loo, 1e-12)}); whitening "
            f"over the batch, (R − mean) / √(var + 1e-8) with the sample variance, gives "
            f"{led.value('whitened advantage of a 1', float(white[0]), want_w[0], 1e-12)} to a 1 "
            f"(`statistics.variance` by hand: max difference "
            f"{led.bound('whitening against statistics.variance', err_w, 1e-12)}).")


def _gap(mean: torch.Tensor, target: torch.Tensor) -> float:
    return float((mean - target).norm() / target.norm())


def section(led: Ledger, figs: dict) -> str:
    led.section = "Variance reduction"
    s = Setup()
    G = G_TABLE
    group_fn = canonical("group_normalized_advantages")
    loo_fn = canonical("leave_one_out_advantages")
    V, _, _ = s.pol.values(s.rewards)
    noise = torch.randn(V.shape, generator=torch.Generator().manual_seed(43), dtype=DTYPE)
    V_wrong = V + noise
    b = float((s.pol.prompt_weights.unsqueeze(1) * s.pol.probs().detach() * s.scores).sum())

    def value_baseline(Vtab):
        def adv(tup, r, m):
            returns = canonical("discounted_returns")(r, m, 1.0)
            v = s.pol.along(Vtab)[tup.prompt, tup.completion].reshape(r.shape)
            return returns - v
        return adv

    def gae_baseline(Vtab, lam):
        def adv(tup, r, m):
            v = s.pol.along(Vtab)[tup.prompt, tup.completion].reshape(r.shape)
            return canonical("gae")(r, v, m, 1.0, lam)[0]
        return adv

    rows = []

    def row(name, how, sheet, got, target, target_name, hand, kind="group", bias_cell=None):
        """A table row: ``got`` = (mean, variance) by refimpl over multisets; ``hand`` the same
        advantage written out by hand (no refimpl), enumerated again over *ordered* tuples."""
        mean, var = got
        h_mean, h_var = s.ordered(G, hand, kind)
        norm2 = float(target.norm() ** 2)
        led.bound(f"{name}: E[g] by refimpl over multisets = by hand over ordered tuples",
                  _gap(mean, h_mean), 1e-10)
        rel_var = led.value(f"{name}: variance by refimpl over multisets = by hand over ordered "
                            "tuples", var / norm2, h_var / norm2, 1e-10)
        gap = _gap(mean, target)
        rows.append((name, how, f"\"{sheet}\"" if sheet != "—" else sheet,
                     bias_cell or sig(gap), rel_var, target_name))
        return gap, var / norm2

    m0, v0 = s.group(G, lambda R, ids: R)
    closed = s.no_baseline_variance(G)
    v0_check = led.bound("no-baseline variance against its closed form",
                         abs(v0 - closed) / closed, 1e-12)
    bias0 = led.bound("no baseline is unbiased", _gap(m0, s.grad_J), 1e-12)
    _, rv0 = row("none", "A = R", "—", (m0, v0), s.grad_J, "∇J", lambda R: R,
                 bias_cell=f"0 ({bias0})")

    b_cell = led.value("b = E[R] against J", b, float(s.pol.J(s.rewards).detach()), 1e-12)
    mc = s.group(G, lambda R, ids: R - b)
    biasc = led.bound("constant baseline fixed before sampling is unbiased",
                      _gap(mc[0], s.grad_J), 1e-12)
    row("constant", f"A = R − b, b = E[R] = {b_cell} fixed before sampling", "No", mc,
        s.grad_J, "∇J", lambda R: R - b, bias_cell=f"0 ({biasc})")

    mv = s.tokens(G, value_baseline(V))
    biasv = led.bound("value baseline (true V) unbiased", _gap(mv[0], s.grad_J), 1e-12)
    _, rvv = row("value (true V)", "A_t = G_t − V(s_t), V exact", "Yes (if V is wrong)", mv,
                 s.grad_J, "∇J", s.hand_value(V), "tokens", bias_cell=f"0 ({biasv})")
    mw = s.tokens(G, value_baseline(V_wrong))
    biasw = led.bound("value baseline (wrong V) unbiased", _gap(mw[0], s.grad_J), 1e-12)
    _, rvw = row("value (wrong V)", "A_t = G_t − V(s_t), V exact + N(0, 1) noise",
                 "Yes (if V is wrong)", mw, s.grad_J, "∇J", s.hand_value(V_wrong), "tokens",
                 bias_cell=f"0 ({biasw})")
    mg = s.tokens(G, gae_baseline(V_wrong, 0.95))
    gap_gae = _gap(mg[0], s.grad_J)
    gae_cell = led.value("GAE(0.95) with a wrong V: bias against the conditional-expectation "
                         "oracle", gap_gae, _gap(s.gae_oracle(V_wrong, 0.95), s.grad_J), 1e-12)
    row("value, bootstrapped (wrong V)", "GAE(λ = 0.95) with the wrong V", "Yes (if V is wrong)",
        mg, s.grad_J, "∇J", s.hand_gae(V_wrong, 0.95), "tokens", bias_cell=gae_cell)
    mt = s.tokens(G, gae_baseline(V, 0.95))
    led.bound("GAE(0.95) with the true V unbiased", _gap(mt[0], s.grad_J), 1e-12)

    mm = s.group(G, lambda R, ids: group_fn(R, ids, "none"))
    gap_m = _gap(mm[0], s.grad_J)
    _, rvm = row("group mean, self included", "A = R − mean of the group (Dr. GRPO)", "—", mm,
                 s.grad_J, "∇J", lambda R: R - R.mean(-1, keepdim=True),
                 bias_cell=led.value("group mean bias is 1/G", gap_m, 1 / G, 1e-12))

    def grpo(R, ids):
        return group_fn(R, ids, "group", 1e-6)

    mn = s.group(G, grpo)
    oracle_n = led.bound(f"group normalisation G={G}: E[g] equals the numpy oracle",
                         _gap(mn[0], s.oracle(G, True, grpo_np)), 1e-11)
    gap_n, rvn = row("group normalisation", "A = (R − mean) / (std + ε) in the group (GRPO)",
                     "Yes (small groups)", mn, s.ideal_group, "∇J/σ per prompt",
                     lambda R: (R - R.mean(-1, keepdim=True)) / (R.std(-1, keepdim=True) + 1e-6))

    mb = s.batch(G)
    led.bound(f"global normalisation N={G}: E[g] equals the numpy oracle",
              _gap(mb[0], s.oracle(G, False, whiten_np)), 1e-11)
    gap_b, _ = row("global normalisation", f"whiten over a batch of N = {G} draws (REINFORCE++)",
                   "Vanishes with large batch", mb, s.ideal_global, "∇J/σ over prompts",
                   lambda R: ((R - R.mean(-1, keepdim=True))
                              / torch.sqrt(R.var(-1, keepdim=True) + 1e-8)),
                   "batch")

    ml = s.group(G, loo_fn)
    biasl = led.bound("leave-one-out unbiased", _gap(ml[0], s.grad_J), 1e-12)
    _, rvl = row("leave-one-out", "A = R − mean of the other G − 1 (RLOO)", "No", ml, s.grad_J,
                 "∇J", lambda R: R - (R.sum(-1, keepdim=True) - R) / (G - 1),
                 bias_cell=f"0 ({biasl})")
    led.notes["variance"] = {"G": G, "none": sig(rv0), "loo": sig(rvl), "critic": sig(rvv),
                             "critic_wrong": sig(rvw), "reduces": rvl < rv0}

    # the size dependence
    mean_bias, std_gap, std_cos, loo_bias = [], [], [], []
    for g in GROUP_SIZES:
        mg_, _ = s.group(g, lambda R, ids: group_fn(R, ids, "none"))
        mean_bias.append(_gap(mg_, s.grad_J))
        led.value(f"group mean bias 1/G at G={g}", mean_bias[-1], 1 / g, 1e-12)
        ms_, _ = s.group(g, grpo)
        led.bound(f"group normalisation G={g}: E[g] equals the numpy oracle",
                  _gap(ms_, s.oracle(g, True, grpo_np)), 1e-11)
        std_gap.append(_gap(ms_, s.ideal_group))
        std_cos.append(1 - cosine(ms_, s.ideal_group))
        ml_, _ = s.group(g, loo_fn)
        loo_bias.append(led.bound(f"leave-one-out unbiased at G={g}", _gap(ml_, s.grad_J), 1e-12))
    batch_gap = []
    for n in BATCH_SIZES:
        mb_, _ = s.batch(n)
        led.bound(f"global normalisation N={n}: E[g] equals the numpy oracle",
                  _gap(mb_, s.oracle(n, False, whiten_np)), 1e-11)
        batch_gap.append(_gap(mb_, s.ideal_global))
    shrinks = led.holds("global normalisation gap shrinks strictly with N",
                        all(b2 < b1 for b1, b2 in zip(batch_gap, batch_gap[1:])), "falls strictly")
    cos_shrinks = led.holds("group std direction error shrinks with G",
                            all(b2 < b1 for b1, b2 in zip(std_cos, std_cos[1:])), "falls strictly")
    positive = led.holds("group std direction error positive at every G", min(std_cos) > 1e-6,
                         "positive", f"smallest {min(std_cos):.3g}")
    figs["normalisation.png"] = lambda path: _figures().normalisation_figure(
        path, GROUP_SIZES,
        {"group mean: |E g - grad J| / |grad J| (= 1/G)": mean_bias,
         "group std: |E g - grad J/sigma| / |grad J/sigma|": std_gap,
         "group std: 1 - cosine(E g, grad J/sigma)": std_cos},
        BATCH_SIZES, {"global whitening: |E g - grad J/sigma| / |grad J/sigma|": batch_gap})

    table = ["| technique | advantage | bias, as the sheet says "
             "| exact relative bias ∣E g − target∣ / ∣target∣ "
             "| exact relative variance E∣g − E g∣² / ∣target∣² | target |",
             "|---|---|---|---|---|---|"]
    table += [f"| {a} | {b_} | {c} | {d} | {e} | {f} |" for a, b_, c, d, e, f in rows]
    size_table = ["| G | group mean: bias (= 1/G) | group std: bias against ∇J/σ "
                  "| group std: 1 − cosine | leave-one-out: bias |", "|---|---|---|---|---|"]
    for g, a, b_, c, d in zip(GROUP_SIZES, mean_bias, std_gap, std_cos, loo_bias):
        size_table.append(f"| {g} | {sig(a)} | {sig(b_)} | {sig(c)} | {d} |")
    batch_table = ["| N | global whitening: bias against ∇J/σ |", "|---|---|"]
    batch_table += [f"| {n} | {sig(x)} |" for n, x in zip(BATCH_SIZES, batch_gap)]
    whiten_link = code_link(canonical("batch_normalized_advantages"),
                            "refimpl.batch_normalized_advantages")
    return "\n".join([
        "## Variance-reduction techniques",
        "",
        "Each row below is a REINFORCE estimator on the tabular policy of the core equations (2 "
        f"prompts, 7 responses each, standard normal scores), with groups of G = {G} samples of "
        "one prompt (the global row: a batch of N = 4 independent draws). Its mean and variance "
        "are sums over every multiset of samples, not estimates. Variance is divided by the "
        "squared norm of the target, so rows with different targets compare. Functions: "
        f"{code_link(group_fn, 'refimpl.group_normalized_advantages')}, "
        f"{code_link(loo_fn, 'refimpl.leave_one_out_advantages')}, "
        f"{whiten_link}, "
        f"{code_link(canonical('gae'), 'refimpl.gae')}; the enumeration: "
        f"{code_link(type(s.pol).tuples, 'TabularPolicy.tuples')}.",
        "",
        *table,
        "",
        _formulas(led),
        "",
        f"Checks behind the table: the variance without a baseline equals its closed form "
        f"(within-prompt variance / G plus the variance across prompts) to {v0_check} relative; "
        "the normalised rows' means equal an effective-reward oracle enumerated separately in "
        f"numpy ({oracle_n} relative at G = {G}; every G and N of the tables below too); every "
        "mean and variance equals the one enumerated again over ordered tuples with the "
        "advantage written out by hand (to 1e-10); GAE(0.95)'s bias equals the one from its "
        "enumerated conditional expectation E[Â ∣ s, a]; GAE(0.95) with the true V is unbiased.",
        "",
        "What is exactly true where the sheet's wording is loose:",
        "",
        f"- **Value baseline.** Subtracting V(s_t) from the Monte-Carlo return is unbiased for "
        f"*every* V that depends on the state only, right or wrong: bias {biasw} with a V off by "
        f"N(0, 1) noise. A wrong V costs variance ({sig(rvw)} against {sig(rvv)} with the "
        f"true V). Bias comes in when V *bootstraps* the target: GAE with λ = 0.95 and the same "
        f"wrong V is off by {sig(gap_gae)} relative.",
        "- **Constant baseline.** \"Subtract the mean reward\" is unbiased only if the mean is "
        "fixed before the sample is drawn (a running mean of earlier batches). The mean of the "
        "current group, self included, scales the expected gradient by exactly 1 − 1/G: bias "
        f"{sig(gap_m)} at G = {G}.",
        f"- **Group normalisation.** Two effects with different size dependence. Subtracting the "
        f"group mean scales the expected gradient by exactly 1 − 1/G (a rescaling: the direction "
        f"is right). "
        f"Dividing by the group's std changes the direction: 1 − cosine to ∇J/σ is "
        f"{sig(std_cos[0])} at G = 2 and {sig(std_cos[-1])} at G = {GROUP_SIZES[-1]}, and it "
        f"{cos_shrinks} with G; it is {positive} at every G computed.",
        f"- **Global normalisation.** The bias against ∇J/σ {shrinks} with the batch size "
        f"(N = {BATCH_SIZES[0]}..{BATCH_SIZES[-1]}), from {sig(batch_gap[0])} to "
        f"{sig(batch_gap[-1])}.",
        f"- **Leave-one-out.** Unbiased at every G from 2 to {GROUP_SIZES[-1]} "
        f"(each {loo_bias[0]}), "
        "because each sample's baseline is independent of it.",
        "",
        *size_table,
        "",
        *batch_table,
        "",
        "![Bias against group and batch size](sheet/normalisation.png)",
    ])


def _figures():
    from conformance.sheet import figures
    return figures
