"""The sheet's core equations and value functions, each computed by refimpl and checked against
an independent expectation: the tabular oracle (exact enumeration, autograd of the exact
objective) or a closed form written out here in plain Python arithmetic."""

from __future__ import annotations

import math
import statistics

import torch

from conformance.sheet.common import (
    DTYPE, canonical, checks_for, code_link, policy, scores_for,
)
from conformance.sheet.ledger import Ledger, sig

EPS_CLIP = 0.2
#: ratios of the clip grid: 0.505, 0.515, ..., 1.495 (no point on a clip boundary)
RATIOS = [0.505 + 0.01 * k for k in range(100)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _where_line(name: str) -> str:
    return (f"Implemented by {code_link(canonical(name), f'refimpl.{name}')}; enforced by "
            f"{checks_for(name)}.")


def policy_gradient(led: Ledger) -> str:
    pol = policy()
    scores = scores_for(pol)
    rewards = pol.scores_to_rewards(scores)
    grad_J = pol.grad_J(rewards)
    pg = canonical("policy_gradient_loss")
    one = pol.tuples(1)

    def surrogate(advantage):                                   # advantage: (K, 1) or (K, 1, L)
        def loss(batch):
            return torch.stack([pg(batch["logp"][k], advantage[k], batch["mask"][k],
                                   agg="seq-mean-token-sum") for k in range(len(one))])
        return loss

    R = scores[one.prompt, one.completion]                       # (K, 1)
    g_R = -pol.expected_gradient(surrogate(R), one)
    _, _, A = pol.values(rewards)
    A_tok = pol.along(A)[one.prompt, one.completion]             # (K, 1, L)
    g_A = -pol.expected_gradient(surrogate(A_tok), one)
    err_R = led.bound("E[grad pg loss with R] = grad J", _rel(g_R, grad_J), 1e-12)
    err_A = led.bound("E[grad pg loss with A(s,a)] = grad J", _rel(g_A, grad_J), 1e-12)
    return "\n".join([
        "### Policy gradient",
        "",
        "$$\\nabla_\\theta J(\\theta) = \\mathbb{E}_{y \\sim \\pi_\\theta}\\Big[\\sum_t "
        "\\nabla_\\theta \\log \\pi_\\theta(y_t \\mid x, y_{<t})\\, A(s_t, y_t)\\Big]$$",
        "",
        _where_line("policy_gradient_loss"),
        "",
        f"Exact, on the tabular policy ({pol.n_prompts} prompts, {pol.n_completions} responses "
        "each, standard normal scores):",
        "",
        "| weight on ∇log π "
        "| relative error of E[−∇ loss] against ∇J (autograd of the exact J) |",
        "|---|---|",
        f"| the return R(y) (REINFORCE) | {err_R} |",
        f"| the true advantage A(s_t, y_t) per token | {err_A} |",
        "",
        "The sheet writes A(s, a) as the weight; the return R and the advantage give the same "
        "expectation because a state-only baseline has zero expected gradient (question 2 below).",
    ])


def value_functions(led: Ledger) -> str:
    pol = policy(n_prompts=1, seed=5)
    rewards = torch.randn(pol.theta.shape, generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    gamma = 0.9
    V, Q, A = pol.values(rewards, gamma=gamma)                  # backward induction
    pi = pol.log_pi().detach().exp()
    L = pol.tree.max_len
    m = pol.mask
    G_t = canonical("discounted_returns")(pol.token_rewards(rewards).reshape(-1, L), m, gamma)
    EV, reach_s = pol.conditional_on_state(G_t.reshape(1, -1, L))
    EQ, reach_sa = pol.conditional_on_transition(G_t.reshape(1, -1, L))
    err_V = float(((EV - V) * (reach_s > 0)).abs().max())
    err_Q = float(((EQ - Q) * (reach_sa > 0)).abs().max())
    A_enum = EQ - EV.unsqueeze(-1)                      # advantage from enumeration alone
    err_A = float(((A_enum - A) * (reach_sa > 0)).abs().max())
    J = float(pol.J(rewards, gamma).detach())
    names = {pol.tree.eos: "EOS"}
    theta = pol.theta.detach()
    rows = []
    for s, prefix in enumerate(pol.tree.states):
        label = "(empty)" if not prefix else " ".join(map(str, prefix))
        z = [math.exp(float(x)) for x in theta[0, s]]
        for a in range(pol.tree.n_actions):
            where = f"s={label}, a={names.get(a, a)}"
            pi_cell = led.value(f"pi({where}) against the softmax by hand", float(pi[0, s, a]),
                                z[a] / sum(z), 1e-12)
            q_cell = led.value(f"Q({where}) against enumeration", float(Q[0, s, a]),
                               float(EQ[0, s, a]), 1e-12)
            v_cell = led.value(f"V({label}) against enumeration", float(V[0, s]),
                               float(EV[0, s]), 1e-12)
            a_cell = led.value(f"A({where}) against enumeration", float(A[0, s, a]),
                               float(A_enum[0, s, a]), 1e-12)
            rows.append(
                f"| {label} | {names.get(a, a)} | {pi_cell} | "
                f"{sig(float(rewards[0, s, a]))} | {q_cell} | {v_cell} | {a_cell} |")
    return "\n".join([
        "## Value functions",
        "",
        "$$V^\\pi(s) = \\mathbb{E}\\Big[\\sum_{k \\ge t} \\gamma^{k-t} r_k "
        "\\,\\Big|\\, s_t = s\\Big], \\quad "
        "Q^\\pi(s, a) = \\mathbb{E}\\Big[\\sum_{k \\ge t} \\gamma^{k-t} r_k "
        "\\,\\Big|\\, s_t = s, a_t = a\\Big], "
        "\\quad A^\\pi = Q^\\pi - V^\\pi$$",
        "",
        "For a language model, a state is a prompt together with the part of the response "
        "written so far, an action is one more token, and the transition just appends it. Below, "
        "one "
        "prompt of a tabular policy with tokens {0, 1} and EOS, responses of at most 2 tokens, a "
        f"reward on every transition (standard normal, seed 6) and γ = {gamma}. V, Q and A come "
        f"from backward induction ({code_link(type(pol).values, 'TabularPolicy.values')}); every "
        "row is reached with positive probability, and every cell is checked against the "
        "enumeration of every response (π against the softmax written out by hand; r is the "
        "input).",
        "",
        "| state (prefix) | action | π(a∣s) | r(s, a) | Q(s, a) | V(s) | A(s, a) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Checked against enumeration of every response, with returns from "
        f"{code_link(canonical('discounted_returns'), 'refimpl.discounted_returns')}:",
        "",
        "- V(s) = E[G_t ∣ s_t = s] for every state: max error "
        f"{led.bound('V = E[G_t | s]', err_V, 1e-12)}",
        f"- Q(s, a) = E[G_t ∣ s_t = s, a_t = a] for every transition: max error "
        f"{led.bound('Q = E[G_t | s, a]', err_Q, 1e-12)}",
        "- A(s, a) = E[G_t ∣ s_t = s, a_t = a] − E[G_t ∣ s_t = s], both enumerated: "
        f"max error {led.bound('A = E[G_t | s, a] - E[G_t | s]', err_A, 1e-12)}",
        f"- V(empty prefix) = J = {led.value('V(root) = J', float(V[0, 0]), J, 1e-12)}",
    ])


def ppo_clip(led: Ledger, figs: dict) -> str:
    ppo = canonical("ppo_clip_loss")
    m = torch.ones(1, 1, dtype=torch.bool)
    curves, zero, worst = {}, {}, 0.0
    for A in (1.0, -1.0):
        obj, grad, n_zero, n_expected = [], [], 0, 0
        for r in RATIOS:
            logp = torch.tensor([[math.log(r)]], dtype=DTYPE, requires_grad=True)
            loss = ppo(logp, torch.zeros(1, 1, dtype=DTYPE), torch.tensor([A], dtype=DTYPE), m,
                       clip_low=EPS_CLIP, agg="token-mean")
            (g_logp,) = torch.autograd.grad(loss, logp)
            g_r = -float(g_logp) / r                              # d objective / d r
            clipped = min(max(r, 1 - EPS_CLIP), 1 + EPS_CLIP)
            want_obj = min(r * A, clipped * A)                    # the sheet's formula, by hand
            want_grad = 0.0 if (A > 0 and r > 1 + EPS_CLIP) or (A < 0 and r < 1 - EPS_CLIP) else A
            value = -float(loss.detach())
            worst = max(worst, abs(value - want_obj), abs(g_r - want_grad))
            obj.append(value)
            grad.append(g_r)
            n_zero += g_r == 0.0
            n_expected += want_grad == 0.0
        curves[f"A = {A:+.0f}"] = (obj, grad)
        zero[A] = (n_zero, n_expected)
    # clip-higher (DAPO): the upper bound alone moves
    high, n_zero, n_expected, worst_high = 0.28, 0, 0, 0.0
    for r in RATIOS:
        for A in (1.0, -1.0):
            logp = torch.tensor([[math.log(r)]], dtype=DTYPE, requires_grad=True)
            loss = ppo(logp, torch.zeros(1, 1, dtype=DTYPE), torch.tensor([A], dtype=DTYPE), m,
                       clip_low=EPS_CLIP, clip_high=high, agg="token-mean")
            (g_logp,) = torch.autograd.grad(loss, logp)
            g_r = -float(g_logp) / r
            want_obj = min(r * A, min(max(r, 1 - EPS_CLIP), 1 + high) * A)
            want_grad = 0.0 if (A > 0 and r > 1 + high) or (A < 0 and r < 1 - EPS_CLIP) else A
            worst_high = max(worst_high, abs(-float(loss.detach()) - want_obj),
                             abs(g_r - want_grad))
            if A > 0:
                n_zero += g_r == 0.0
                n_expected += want_grad == 0.0
    figs["clip.png"] = lambda path: _figures().clip_figure(path, RATIOS, EPS_CLIP, curves)
    pos = led.holds("clip zeroes the gradient for A>0 exactly where r > 1+eps",
                    zero[1.0][0] == zero[1.0][1], f"{zero[1.0][0]}",
                    f"{zero[1.0][0]} exact zeros, closed form {zero[1.0][1]}")
    neg = led.holds("clip zeroes the gradient for A<0 exactly where r < 1-eps",
                    zero[-1.0][0] == zero[-1.0][1], f"{zero[-1.0][0]}",
                    f"{zero[-1.0][0]} exact zeros, closed form {zero[-1.0][1]}")
    return "\n".join([
        "### PPO clipped objective",
        "",
        "$$L^{\\mathrm{CLIP}} = \\mathbb{E}_t\\big[\\min\\big(r_t A_t,\\ "
        "\\mathrm{clip}(r_t, 1-\\epsilon_{\\mathrm{low}}, 1+\\epsilon_{\\mathrm{high}}) "
        "A_t\\big)\\big], "
        "\\quad r_t = \\frac{\\pi_\\theta(a_t \\mid s_t)}{\\pi_{\\mathrm{old}}(a_t \\mid s_t)}$$",
        "",
        _where_line("ppo_clip_loss") + " The loss is the negated objective; ε_low = ε_high = ε "
        "unless clip-higher (DAPO) sets them apart, and dual clip bounds the loss of a negative "
        "advantage by −c·A.",
        "",
        f"On a grid of {len(RATIOS)} ratios from {RATIOS[0]:.3f} to {RATIOS[-1]:.3f} "
        f"(step 0.01, no point on a boundary), ε = {EPS_CLIP}, A = ±1: objective and "
        "d objective / d r from "
        "autograd through refimpl against the formula written out by hand, max difference "
        f"{led.bound('ppo clip objective and gradient on the grid', worst, 1e-12)}. The gradient "
        f"is exactly 0 at {pos} ratios for A = +1 (every r > 1 + ε) and at {neg} for A = −1 "
        "(every r < 1 − ε), nowhere else: clipping removes the gradient only on the side where "
        "the ratio has already moved in the advantage's favour. With clip-higher (DAPO, "
        f"ε_high = {high}) the zeros for A = +1 are "
        + led.holds("clip-higher zeroes the gradient for A>0 exactly where r > 1+eps_high",
                    n_zero == n_expected, f"{n_zero}", f"{n_zero} zeros, closed form {n_expected}")
        + f" (every r > {1 + high:g}); objective and gradient on the grid for both signs, max "
        "difference "
        f"{led.bound('clip-higher objective and gradient on the grid', worst_high, 1e-12)}.",
        "",
        "![PPO clip objective and gradient](sheet/clip.png)",
    ])


def grpo_advantage(led: Ledger) -> str:
    group = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    eps = 1e-6
    fn = canonical("group_normalized_advantages")
    ids = torch.zeros(len(group), dtype=torch.long)
    out = fn(torch.tensor(group, dtype=DTYPE), ids, "group", eps)
    mean, std = statistics.fmean(group), statistics.stdev(group)       # n - 1
    pstd = statistics.pstdev(group)                                    # n
    want = [(r - mean) / (std + eps) for r in group]
    err = max(abs(float(a) - b) for a, b in zip(out, want))
    flat = fn(torch.ones(4, dtype=DTYPE), torch.zeros(4, dtype=torch.long), "group", eps)
    dr = canonical("group_normalized_advantages")(torch.tensor(group, dtype=DTYPE), ids, "none")
    err_dr = max(abs(float(a) - (r - mean)) for a, r in zip(dr, group))
    correct = float(out[0])
    factor = math.sqrt(len(group) / (len(group) - 1))
    pop = (1 - mean) / (pstd + eps)                    # the advantage with the population std
    return "\n".join([
        "### GRPO advantage",
        "",
        "$$\\hat A_i = \\frac{r_i - \\operatorname{mean}(r_1, \\dots, r_G)}"
        "{\\operatorname{std}(r_1, \\dots, r_G) + \\varepsilon}$$",
        "",
        _where_line("group_normalized_advantages") + " `scale=\"none\"` is Dr. GRPO's "
        "(mean subtracted, no division).",
        "",
        f"A group of G = {len(group)} verifiable rewards {[int(r) for r in group]}, ε = {eps:g}: "
        f"refimpl against `statistics.fmean`/`statistics.stdev`, max difference "
        f"{led.bound('GRPO advantages vs statistics.stdev', err, 1e-12)}. A correct answer gets "
        f"{led.value('GRPO advantage of a correct answer', correct, want[0], 1e-12)} and a wrong "
        f"one {led.value('GRPO advantage of a wrong answer', float(out[1]), want[1], 1e-12)}. "
        "The std is the sample std (divisor G − 1); with the population std (divisor G) the "
        "correct answer would get "
        f"{led.value('population-std advantage', pop, correct * factor, 1e-6)}, "
        f"a factor √(G/(G−1)) = {sig(factor)} apart (up to ε). Dr. GRPO's advantage is "
        "r − mean: max difference "
        f"{led.bound('Dr GRPO advantage = r - mean', err_dr, 1e-12)}. "
        "A group whose rewards are all equal gets advantages "
        f"{led.holds('a constant group gets exact zeros', bool((flat == 0).all()), 'exactly 0')} "
        "(no signal, and no NaN: see degenerate groups under red flags).",
    ])


def dpo(led: Ledger) -> str:
    pc, pr, rc, rr, beta = -1.2, -2.5, -1.5, -2.0, 0.1
    t = lambda x: torch.tensor([x], dtype=DTYPE, requires_grad=True)     # noqa: E731
    args = [t(pc), t(pr), t(rc), t(rr)]
    loss = canonical("dpo_loss")(*args, beta=beta)
    (g_chosen,) = torch.autograd.grad(loss.sum(), args[0])
    z = beta * ((pc - rc) - (pr - rr))
    want = math.log1p(math.exp(-z))
    sig_neg = 1 / (1 + math.exp(z))
    g_w = float(g_chosen[0])
    zero = torch.zeros(1, dtype=DTYPE)
    at0 = float(canonical("dpo_loss")(zero, zero, zero, zero, beta=beta)[0])
    return "\n".join([
        "### DPO loss",
        "",
        "$$\\mathcal{L}_{\\mathrm{DPO}} = -\\log \\sigma\\Big(\\beta \\log "
        "\\frac{\\pi_\\theta(y_w \\mid x)}"
        "{\\pi_{\\mathrm{ref}}(y_w \\mid x)} - \\beta \\log \\frac{\\pi_\\theta(y_l \\mid x)}"
        "{\\pi_{\\mathrm{ref}}(y_l \\mid x)}\\Big)$$",
        "",
        _where_line("dpo_loss"),
        "",
        f"With log π(y_w) = {pc}, log π(y_l) = {pr}, log π_ref(y_w) = {rc}, "
        f"log π_ref(y_l) = {rr}, β = {beta}: the log-ratio margin is h = {sig(z / beta)} and "
        f"z = βh = {sig(z)}; the loss "
        f"{led.value('DPO loss against log1p(exp(-z))', float(loss[0].detach()), want, 1e-12)} "
        f"(closed form log(1 + e^(−z))), and ∂L/∂log π(y_w) = −β σ(−z) = "
        f"{led.value('DPO gradient against -beta sigma(-z)', g_w, -beta * sig_neg, 1e-12)}. "
        "At z = 0 the loss is log 2 = "
        f"{led.value('DPO loss at z = 0 is log 2', at0, math.log(2), 1e-12)}.",
    ])


def kl(led: Ledger, figs: dict) -> str:
    pol, ref = policy(seed=1), policy(seed=2)
    L = pol.tree.max_len
    lp, lq = pol.token_logp().detach(), ref.token_logp().detach()
    p = pol.probs().detach()
    # the oracle: the chain rule, sum over states of P(reach s) KL(pi(.|s) || ref(.|s))
    exact = (pol.state_visitation().detach() * pol.state_kl(ref).detach()).sum(1)
    m = pol.mask.repeat(pol.n_prompts, 1)
    seq_formula = (p * (pol.seq_logp().detach() - ref.seq_logp().detach())).sum(1)
    l_tok = torch.where(pol.mask, lp - lq, torch.zeros_like(lp))            # by hand, per token
    hand = {"k1": l_tok, "k2": 0.5 * l_tok ** 2,
            "k3": torch.where(pol.mask, torch.exp(-l_tok) - 1 + l_tok, torch.zeros_like(lp))}
    lines = []
    for kind in ("k1", "k2", "k3"):
        k = canonical("kl_estimate")(lp.reshape(-1, L), lq.reshape(-1, L), m, kind)
        per_seq = k.reshape(p.shape + (L,)).sum(-1)
        mean = (p * per_seq).sum(1)
        var = (p * (per_seq - mean.unsqueeze(1)) ** 2).sum(1)
        h = hand[kind].sum(-1)
        var_hand = (p * h ** 2).sum(1) - (p * h).sum(1) ** 2
        var_cell = ", ".join(led.value(f"variance of sum_t {kind} against the formula by hand",
                                       float(v), float(w), 1e-12) for v, w in zip(var, var_hand))
        if kind == "k2":
            by_hand = (p * (0.5 * (lp - lq) ** 2).sum(-1)).sum(1)
            gap = float((mean - exact).abs().max())
            shown = ", ".join(led.value("E[sum_t k2] against the hand formula", float(x), float(y),
                                        1e-12) for x, y in zip(mean, by_hand))
            cell = led.holds("E[k2] differs from KL", gap > 1e-2, f"biased: E = {shown}",
                             f"largest gap {gap:.3g}")
        else:
            gap = float((mean - exact).abs().max())
            cell = "unbiased: ∣E − KL∣ " + led.bound(f"E[sum_t {kind}] = KL", gap, 1e-12)
        lines.append(f"| {kind} | {cell} | {var_cell} |")
    log_ratios = [-2 + 0.04 * i for i in range(101)]
    ests = {}
    for kind, label in (("k1", "k1 = l"), ("k2", "k2 = l^2 / 2"), ("k3", "k3 = exp(-l) - 1 + l")):
        lr = torch.tensor([log_ratios], dtype=DTYPE)
        ests[label] = canonical("kl_estimate")(lr, torch.zeros_like(lr), None, kind)[0].tolist()
    figs["kl.png"] = lambda path: _figures().kl_figure(path, log_ratios, ests)
    return "\n".join([
        "### KL divergence (Monte Carlo)",
        "",
        "$$\\hat D_{\\mathrm{KL}}(y) = \\sum_t k\\big(\\log \\pi_\\theta(y_t \\mid x, y_{<t}) - "
        "\\log \\pi_{\\mathrm{ref}}(y_t \\mid x, y_{<t})\\big), \\quad y \\sim \\pi_\\theta$$",
        "",
        _where_line("kl_estimate") + " With l the token's log-ratio: k1 = l (the sheet's sum of "
        "log-probability differences), k2 = l²/2, k3 = e^(−l) − 1 + l.",
        "",
        "Exact, over every response of the tabular policy against a second one (seeds 1 and 2), "
        "the true KL from the chain rule (Σ_s P(reach s) · KL(π(·∣s) ‖ π_ref(·∣s)), "
        "not the sequence formula): KL = "
        + ", ".join(led.value("KL by the chain rule against the sequence formula", float(x),
                              float(y), 1e-12) for x, y in zip(exact, seq_formula))
        + " for the two prompts (the sequence formula Σ_y π(y) log(π(y)/π_ref(y)) agrees).",
        "",
        "| estimator | expectation of the per-response sum | variance (per prompt) |",
        "|---|---|---|",
        *lines,
        "",
        "k1 and k3 are unbiased for the sequence KL; k2 is not (it matches the KL only to second "
        "order in the log-ratio). k3 is never negative, k1 often is (figure). What each one "
        "does as a *loss* is question 5 below.",
        "",
        "![k1, k2, k3 against the log-ratio](sheet/kl.png)",
    ])


def gae(led: Ledger) -> str:
    gamma, lam = 0.9, 0.8
    g = torch.Generator().manual_seed(7)
    r = torch.randn(3, 5, generator=g, dtype=DTYPE)
    v = torch.randn(3, 5, generator=g, dtype=DTYPE)
    lengths = [5, 3, 1]
    m = torch.tensor([[t < n for t in range(5)] for n in lengths])
    adv, _ = canonical("gae")(r, v, m, gamma, lam)
    worst = 0.0
    for b, n in enumerate(lengths):                         # the sheet's sum, term by term
        rb, vb = r[b].tolist(), v[b].tolist()
        delta = [rb[t] + gamma * (vb[t + 1] if t + 1 < n else 0.0) - vb[t] for t in range(n)]
        for t in range(n):
            want = sum((gamma * lam) ** l * delta[t + l] for l in range(n - t))
            worst = max(worst, abs(float(adv[b, t]) - want))
    pol = policy(max_len=3, seed=41)
    rewards = torch.randn(pol.theta.shape, generator=torch.Generator().manual_seed(42), dtype=DTYPE)
    V, _, A = pol.values(rewards, gamma)
    L = pol.tree.max_len
    rt, Vt = pol.token_rewards(rewards).reshape(-1, L), pol.along(V).reshape(-1, L)
    mm = pol.mask.repeat(pol.n_prompts, 1)
    errs = []
    for lam_ in (0.0, 0.5, 0.95, 1.0):
        a, _ = canonical("gae")(rt, Vt, mm, gamma, lam_)
        e, reach = pol.conditional_on_transition(a.reshape(pol.n_prompts, -1, L))
        errs.append(float(((e - A) * (reach > 0)).abs().max()))
    return "\n".join([
        "### GAE",
        "",
        "$$\\hat A_t^{\\mathrm{GAE}(\\gamma, \\lambda)} = \\sum_{l \\ge 0} (\\gamma\\lambda)^l "
        "\\delta_{t+l}, \\quad \\delta_t = r_t + \\gamma V(s_{t+1}) - V(s_t)$$",
        "",
        _where_line("gae") + " The sum stops at the response's last token (with positions "
        "0..T−1, l runs to T − 1 − t), and V after the last token is 0: the response has "
        "ended.",
        "",
        f"- Three ragged rows (lengths {lengths}, random r and V, γ = {gamma}, λ = {lam}): "
        "refimpl against the sum written out term by term, max difference "
        f"{led.bound('gae against the explicit sum', worst, 1e-12)}.",
        "- On a tabular policy with 3-token responses and a reward on every transition, with the "
        "true V: E[Â_t ∣ s_t, a_t] = A^π(s_t, a_t) exactly for λ = 0, 0.5, 0.95, 1, max error "
        f"{led.bound('E[GAE | s, a] = A with the true V', max(errs), 1e-12)}. With a wrong V the "
        "advantage is off at every λ, but at λ = 1 it is G_t − V(s_t), a state baseline, so "
        "the policy gradient stays unbiased; at λ = 0.95 the gradient is biased (the "
        "variance-reduction table below).",
    ])


def bradley_terry(led: Ledger) -> str:
    bt = canonical("bradley_terry_loss")
    rw, rl = 0.7, -0.4
    loss = float(bt(torch.tensor([rw], dtype=DTYPE), torch.tensor([rl], dtype=DTYPE))[0])
    want = math.log1p(math.exp(-(rw - rl)))
    p = 0.8
    d_star = math.log(p / (1 - p))
    d = torch.tensor([d_star], dtype=DTYPE, requires_grad=True)
    zero = torch.zeros(1, dtype=DTYPE)
    expected = p * bt(d, zero) + (1 - p) * bt(zero, d)             # y_w wins with probability p
    (grad,) = torch.autograd.grad(expected.sum(), d)
    return "\n".join([
        "### Bradley-Terry",
        "",
        "$$P(y_w \\succ y_l) = \\sigma\\big(r(y_w) - r(y_l)\\big), \\quad "
        "\\mathcal{L}_{\\mathrm{BT}} = -\\log \\sigma\\big(r(y_w) - r(y_l)\\big)$$",
        "",
        _where_line("bradley_terry_loss"),
        "",
        f"- r(y_w) = {rw}, r(y_l) = {rl}: loss {led.value('BT loss', loss, want, 1e-12)} "
        "against log(1 + e^(−(r_w − r_l))).",
        f"- If y_w is preferred with probability p = {p}, the expected loss over both orders is "
        f"stationary at r_w − r_l = log(p / (1 − p)) = {sig(d_star)}: its derivative there is "
        f"{led.bound('BT expected-loss derivative at logit(p)', abs(float(grad[0])), 1e-12)} in "
        "absolute value, so a reward model trained to the minimum recovers the preference "
        "probability through σ.",
    ])


def _figures():
    from conformance.sheet import figures
    return figures


def section(led: Ledger, figs: dict) -> str:
    from conformance.sheet import run_section
    led.section = "Core equations"
    parts = [
        "## Core equations",
        "",
        "Every number in this section is computed when the sheet is generated (by refimpl "
        "wherever a function of the contract is involved) and checked against an expectation "
        "computed another way. The tabular policies are exact: "
        "their responses are enumerated, so an expectation is a finite sum in float64, and a "
        "residual printed as \"< 1e-12\" is rounding, not sampling error.",
        "",
        run_section(led, policy_gradient),
        "",
        run_section(led, ppo_clip, figs),
        "",
        run_section(led, grpo_advantage),
        "",
        run_section(led, dpo),
        "",
        run_section(led, kl, figs),
        "",
        run_section(led, gae),
        "",
        run_section(led, bradley_terry),
    ]
    led.section = "Value functions"
    return "\n".join(parts) + "\n\n" + run_section(led, value_functions)
