"""The sheet's six interview questions, each answered by a short computation whose output is
embedded in the document and checked like every other number of the sheet."""

from __future__ import annotations

import math

import torch

from refimpl.tabular import TabularPolicy
from conformance.sheet import runs
from conformance.sheet.common import DTYPE, canonical, code_link, policy, scores_for, token_jacobian
from conformance.sheet.ledger import Ledger


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def derivation(led: Ledger) -> str:
    pol = policy()
    scores = scores_for(pol)
    J = pol.J(pol.scores_to_rewards(scores))
    grad_J = pol.grad(J).flatten()
    jac_tok = token_jacobian(pol)                                  # (P, C, L, D)
    jac_seq = jac_tok.sum(2)                                       # sum_t grad log pi(y_t | .)
    P, C, L = pol.n_prompts, pol.n_completions, pol.tree.max_len
    tree = pol.tree

    def seq_logp(th):                # log pi(y | x) by refimpl, from the logits of each prefix
        logits = th[:, tree.state]                                 # (P, C, L, A)
        tok = canonical("token_logprobs")(logits.reshape(P * C, L, -1),
                                          tree.tokens.repeat(P, 1))
        return canonical("sequence_logprob")(tok, tree.mask.repeat(P, 1)).reshape(P, C)
    theta = pol.theta.detach().clone()
    jac_refimpl = torch.autograd.functional.jacobian(seq_logp, theta).reshape(P, C, -1)
    step2 = float((jac_refimpl - jac_seq).abs().max())
    pi = torch.softmax(theta, -1)
    by_hand = torch.tensor([[math.prod(float(pi[x, tree.state[c, t], tree.tokens[c, t]])
                                       for t in range(int(tree.lengths[c])))
                             for c in range(C)] for x in range(P)], dtype=DTYPE)
    step0 = float((seq_logp(theta).exp() - by_hand).abs().max())
    p = pol.probs().detach()
    h = 1e-5                                      # central differences of pi(y|x) in each logit
    flat = theta.flatten()
    fd = torch.stack([(seq_logp((flat + h * e).reshape(theta.shape)).exp()
                       - seq_logp((flat - h * e).reshape(theta.shape)).exp()) / (2 * h)
                      for e in torch.eye(flat.numel(), dtype=DTYPE)], dim=-1)      # (P, C, D)
    step1 = float((fd - p.unsqueeze(-1) * jac_seq).abs().max())
    w = pol.prompt_weights
    score_form = (w[:, None, None] * p.unsqueeze(-1) * scores.unsqueeze(-1) * jac_seq).sum((0, 1))
    step3 = _rel(score_form, grad_J)
    # causality: with a reward on every token, past rewards drop out of the expectation
    dense = policy(max_len=3, seed=41)
    r = torch.randn(dense.theta.shape, generator=torch.Generator().manual_seed(42), dtype=DTYPE)
    gJ = dense.grad_J(r).flatten()
    L = dense.tree.max_len
    rt = dense.token_rewards(r)                                    # (P, C, L)
    m = dense.mask.repeat(dense.n_prompts, 1)
    to_go = canonical("discounted_returns")(rt.reshape(-1, L), m, 1.0).reshape(rt.shape)
    past = rt.cumsum(-1) - rt                                      # rewards before token t
    jd = token_jacobian(dense)
    pd = dense.probs().detach()
    wd = dense.prompt_weights

    def expect(weight):
        return (wd[:, None, None, None] * pd[..., None, None] * weight.unsqueeze(-1)
                * jd).sum((0, 1, 2))
    step4 = _rel(expect(to_go), gJ)
    step5 = float(expect(past).norm() / gJ.norm())
    return "\n".join([
        "**1. The policy-gradient theorem, step by step.** "
        "J(θ) = Σ_x μ(x) Σ_y π_θ(y∣x) R(x, y), "
        "with μ and R free of θ. Each step checked on the tabular policy:",
        "",
        f"- a response's probability is the product of its tokens' (refimpl's `token_logprobs` and "
        f"`sequence_logprob` against the product of softmax entries by hand): max difference "
        f"{led.bound('sequence probability = product of token probabilities', step0, 1e-12)}.",
        "- log-derivative trick, ∇π(y∣x) = π(y∣x) ∇log π(y∣x) for every response, "
        f"the left side by central differences (h = {h:g}) and the right by autograd: "
        "max difference "
        f"{led.bound('log-derivative trick (finite differences)', step1, 1e-8)}.",
        f"- only the policy's own factors carry θ (the transition, appending a token, is fixed), "
        f"so ∇log π(y∣x) = Σ_t ∇log π(y_t∣x, y_<t): refimpl's sequence log-probability "
        f"differentiated against the per-token scores summed, max difference "
        f"{led.bound('sequence score = sum of token scores', step2, 1e-12)}.",
        "- so ∇J = Σ_x μ(x) Σ_y π(y∣x) ∇log π(y∣x) R = E[∇log π · R]: "
        "relative error against autograd of the exact J "
        f"{led.bound('score-function form of grad J', step3, 1e-12)}.",
        "- with a reward on every token (3-token responses), weighting ∇log π(y_t∣·) by "
        "the reward-to-go G_t gives ∇J too "
        f"({led.bound('reward-to-go form', step4, 1e-12)} relative), "
        f"because rewards earned before token t contribute "
        f"{led.bound('past rewards drop out', step5, 1e-12)} (relative to ∣∇J∣) "
        "in expectation.",
    ])


def baseline(led: Ledger) -> str:
    pol = policy()
    scores = scores_for(pol)
    grad_J = pol.grad_J(pol.scores_to_rewards(scores)).flatten()
    jac_seq = token_jacobian(pol).sum(2)
    p = pol.probs().detach()
    w = pol.prompt_weights
    zero = float((p.unsqueeze(-1) * jac_seq).sum(1).abs().max())
    worst = 0.0
    for b in (-1.0, 0.5, 3.0):
        g = (w[:, None, None] * p.unsqueeze(-1) * (scores - b).unsqueeze(-1) * jac_seq).sum((0, 1))
        worst = max(worst, _rel(g, grad_J))
    return "\n".join([
        "**2. Why a baseline adds no bias.** The score has mean zero: "
        "Σ_y π(y∣x) ∇log π(y∣x) = ∇Σ_y π(y∣x) = ∇1 = 0. On the tabular policy "
        f"that sum is {led.bound('E[grad log pi] = 0', zero, 1e-12)} in every coordinate, and "
        "E[∇log π · (R − b)] equals ∇J for b = −1, 0.5 and 3 "
        f"({led.bound('constant baselines unbiased', worst, 1e-12)} "
        "relative). The argument needs b independent of the sampled y: a baseline that includes "
        "the sample itself (the group mean) scales the gradient by 1 − 1/G, and a "
        "bootstrapped value biases it (the variance-reduction table).",
    ])


def clipping(led: Ledger) -> str:
    ppo = canonical("ppo_clip_loss")
    eps, c = 0.2, 3.0
    m = torch.ones(1, 1, dtype=torch.bool)
    rows = []
    for A in (1.0, -1.0):
        for r in (0.7, 0.9, 1.1, 1.3, 4.0):
            logp = torch.tensor([[math.log(r)]], dtype=DTYPE, requires_grad=True)
            loss = ppo(logp, torch.zeros(1, 1, dtype=DTYPE), torch.tensor([A], dtype=DTYPE), m,
                       clip_low=eps, dual_clip=c if A < 0 else None)
            (g,) = torch.autograd.grad(loss, logp)
            grad_r = -float(g) / r
            clipped = (A > 0 and r > 1 + eps) or (A < 0 and r < 1 - eps)
            dual = A < 0 and r > c
            want = 0.0 if clipped or dual else A
            obj = min(r * A, min(max(r, 1 - eps), 1 + eps) * A)
            want_obj = max(obj, c * A) if A < 0 else obj
            why = ("clipped (r > 1 + ε)" if clipped and A > 0
                   else "clipped (r < 1 − ε)" if clipped
                   else f"dual clip (r > c = {c:g})" if dual else "unclipped")
            obj_cell = led.value(f"ppo objective A={A} r={r}", -float(loss.detach()), want_obj,
                                 1e-12)
            grad_cell = led.value(f"ppo gradient A={A} r={r}", grad_r, want, 1e-12)
            rows.append(f"| {A:+.0f} | {r:g} | {obj_cell} | {grad_cell} | {why} |")
    return "\n".join([
        "**3. What PPO's clipping does.** The ratio is not forced into [1 − ε, 1 + ε]; the "
        "objective stops rewarding moves beyond it. The min picks the clipped term only when "
        "the ratio has already moved in the direction the advantage favours, and there the "
        "gradient is exactly 0; on the other side the unclipped term is kept, so a ratio that "
        "moved against the advantage is pulled back, unless dual clip (c = 3 here) caps the loss "
        "of a negative advantage once r > c. From "
        f"{code_link(ppo, 'refimpl.ppo_clip_loss')}, ε = {eps}, each "
        "value checked against the formula by hand:",
        "",
        "| A | r | objective | d objective / d r | regime |",
        "|---|---|---|---|---|",
        *rows,
    ])


def critic(led: Ledger, committed: dict) -> str:
    v = led.notes.get("variance")
    exact = ""
    if v:
        reduction = led.holds("the leave-one-out group baseline reduces variance", v["reduces"],
                              f"{v['none']} → {v['loo']}")
        exact = (f" Exactly, with G = {v['G']} samples of a prompt on the tabular policy (the "
                 "relative variances of the variance-reduction table above): no baseline → "
                 f"leave-one-out group baseline {reduction}; a perfect critic (the true V(s_t) "
                 f"subtracted per token) {v['critic']}, a poorly fitted one (the true V plus "
                 f"N(0, 1) noise) {v['critic_wrong']}. The leave-one-out baseline is unbiased "
                 "without any learned function (GRPO's own mean-and-std version is biased, see "
                 "the table); a critic is only as good as its fit, and unbiased only while it "
                 "does not bootstrap.")
    cost = ""
    grpo, ppo, dpo, ipo = (committed.get(n) for n in ("grpo", "ppo", "dpo", "ipo"))
    if grpo and ppo:
        cost = (f" On the same task ({grpo['prompts']} prompts a step, {grpo['group']} samples "
                f"each) the committed GRPO run held {grpo['models']} models ({grpo['held']}) and "
                f"PPO {ppo['models']} ({ppo['held']}): the critic is a second trained model with "
                "its own optimiser state and its own forward and backward passes. Their recorded "
                f"steps took {grpo['step_s']} s and {ppo['step_s']} s")
        if dpo and ipo:
            cost += (f"; read that ratio with care: the runs shared the machine two at a time, and "
                     f"DPO and IPO, which do the same work per step, recorded {dpo['step_s']} s "
                     f"and {ipo['step_s']} s")
        cost += "."
    return ("**4. Why GRPO can do without a critic.** Its baseline comes from the group: the "
            "other samples of the same prompt (with the sample itself, in GRPO's mean), so no "
            "value model is trained or stored; it pays with G samples per prompt." + exact + cost)


def kl_three_ways(led: Ledger) -> str:
    pol = TabularPolicy.random(n_prompts=2, n_tokens=3, max_len=1, seed=11)
    ref = TabularPolicy.random(n_prompts=2, n_tokens=3, max_len=1, seed=12)
    one = pol.tuples(1)
    lq = ref.token_logp().detach()
    kl_fn = canonical("kl_estimate")
    w = pol.prompt_weights

    lq_all = ref.seq_logp().detach()

    def forward_kl():                                                        # KL(pi || ref)
        lp_all = pol.seq_logp()
        return (w * (lp_all.exp() * (lp_all - lq_all)).sum(1)).sum()

    def reverse_kl():                                                        # KL(ref || pi)
        return (w * (lq_all.exp() * (lq_all - pol.seq_logp())).sum(1)).sum()
    forward = forward_kl().detach()
    pi_, q_ = pol.probs().detach(), ref.probs().detach()          # one token: the state's pi
    chain = float((w * (pol.state_kl(ref).detach()[:, 0])).sum())
    k2_hand = float((w * (pi_ * 0.5 * (pi_.log() - q_.log()) ** 2).sum(1)).sum())
    g_forward, g_reverse = pol.grad(forward_kl()).flatten(), pol.grad(reverse_kl()).flatten()
    rows = []
    for kind, want, name in (("k1", None, "0"), ("k2", g_forward, "∇KL(π ‖ π_ref)"),
                             ("k3", g_reverse, "∇KL(π_ref ‖ π)")):
        def surrogate(batch, kind=kind):
            ref_lp = lq[one.prompt, one.completion]                          # (K, 1, L)
            return torch.stack([kl_fn(batch["logp"][k], ref_lp[k], batch["mask"][k], kind).sum()
                                for k in range(len(one))])
        value = (pol.tuple_weights(one) * surrogate(pol.batch(one)).detach()).sum()
        g = pol.expected_gradient(surrogate, one).flatten()
        if want is None:
            rel_norm = float(g.norm() / g_forward.norm())
            grad_cell = "0: " + led.bound("E[grad k1] = 0", rel_norm, 1e-12)
        else:
            grad_cell = f"{name}: " + led.bound(f"E[grad {kind}] = {name}", _rel(g, want), 1e-12)
        exact = kind != "k2"
        if exact:
            value_cell = f"KL: {led.bound(f'E[{kind}] = KL', abs(float(value - forward)), 1e-12)}"
        else:
            shown = led.value("E[k2] against sum pi l^2 / 2 by hand", float(value), k2_hand, 1e-12)
            value_cell = led.holds("E[k2] is not KL", abs(float(value - forward)) > 1e-3,
                                   f"{shown}, not KL")
        rows.append(f"| {kind} | {value_cell} | {grad_cell} |")
    return "\n".join([
        "**5. The KL in practice.** Sample y from the policy, score it under the policy and under "
        "the frozen reference, and sum a per-token estimate of the KL built from the log-ratio. "
        "Which estimate matters twice: for its value (a reward penalty, a logged metric) and, when "
        "the KL is a loss term, for its gradient. Exactly, on a one-token policy with 4 outcomes "
        "against a second one (the sampling held fixed, as `loss.backward()` does), "
        "KL(π ‖ π_ref) "
        f"= {led.value('one-token KL against the chain rule', float(forward), chain, 1e-12)}:",
        "",
        "| estimator | expected value (residual against the true value) | expected gradient "
        "as a loss (relative residual) |",
        "|---|---|---|",
        *rows,
        "",
        "So, for one token: k1 is an unbiased KL *value* whose expected gradient is zero (it "
        "regularises nothing as a loss); k2's value is biased but its gradient is the KL's; k3's "
        "value is unbiased and never negative, but as a loss it follows the gradient of the "
        "*other* KL direction. Over a multi-token response the per-token terms summed with the "
        "sampling held fixed give none of these sequence-level gradients exactly (the state "
        "distribution moves with θ too); the certified checks pin the per-state versions "
        f"(`kl_estimate/exact-loss-gradients`). From {code_link(kl_fn, 'refimpl.kl_estimate')}.",
    ])


def dpo_vs_rl(led: Ledger, committed: dict) -> str:
    beta = 0.5
    ref = TabularPolicy.random(n_prompts=2, n_tokens=3, max_len=1, seed=21)
    r = torch.randn(2, ref.n_completions, generator=torch.Generator().manual_seed(22), dtype=DTYPE)
    # the KL-regularised optimum pi* ~ pi_ref exp(r / beta), written into the logits
    action = ref.tree.tokens[:, 0]                                     # completion -> its token
    log_ref = torch.log_softmax(ref.theta.detach(), dim=-1)
    theta = log_ref.clone()
    theta[:, 0, action] = log_ref[:, 0, action] + r / beta
    star = TabularPolicy(theta, 3, 1)
    lref = ref.seq_logp().detach()
    mu = lref.exp()                                                    # pairs drawn from pi_ref

    def dpo_population(pol):
        lp = pol.seq_logp()
        C = pol.n_completions
        i, j = torch.meshgrid(torch.arange(C), torch.arange(C), indexing="ij")
        i, j = i.flatten(), j.flatten()
        total = 0
        for x in range(pol.n_prompts):
            win = torch.sigmoid(r[x, i] - r[x, j])                       # P(y_i preferred to y_j)
            loss = canonical("dpo_loss")(lp[x, i], lp[x, j], lref[x, i], lref[x, j], beta=beta)
            total = total + pol.prompt_weights[x] * (mu[x, i] * mu[x, j] * win * loss).sum()
        return total

    def rl_objective(pol):
        J = (pol.prompt_weights * (pol.probs() * r).sum(1)).sum()
        return J - beta * (pol.prompt_weights * pol.kl(ref)).sum()

    at_ref = TabularPolicy(ref.theta.detach(), 3, 1)
    g_dpo_ref = float(at_ref.grad(dpo_population(at_ref)).norm())
    g_dpo = float(star.grad(dpo_population(star)).norm()) / g_dpo_ref
    g_rl_ref = float(at_ref.grad(rl_objective(at_ref)).norm())
    g_rl = float(star.grad(rl_objective(star)).norm()) / g_rl_ref
    text = [
        "**6. DPO or RL?** Both optimise the same target: the KL-regularised objective "
        "E[r] − β KL(π ‖ π_ref) is maximised by π* ∝ π_ref · exp(r/β), "
        "and DPO's expected loss on "
        "preferences drawn by Bradley-Terry from the same r is stationary at that π*. On a "
        f"one-token tabular policy (β = {beta}), at π*: the gradient of DPO's population loss is "
        f"{led.bound('DPO population gradient zero at pi*', g_dpo, 1e-12)} of its size at π_ref, "
        "and the RL objective's gradient "
        f"{led.bound('RL objective gradient zero at pi*', g_rl, 1e-12)} "
        "of its size at π_ref. They differ in the data: DPO learns from a fixed set of pairs "
        "(no sampling, no reward model, one model trained against a frozen reference), RL samples "
        "from the current policy and can keep improving where the pairs say nothing.",
    ]
    dpo, grpo = committed.get("dpo"), committed.get("grpo")
    if dpo and grpo:
        text.append(
            f"On the same task (reverse, seed 0), from the committed runs: DPO took "
            f"{dpo['steps']} steps at {dpo['step_s']} s each with no samples drawn, greedy "
            f"accuracy {dpo['acc']}; GRPO took {grpo['steps']} steps at {grpo['step_s']} s each "
            f"with {grpo['group']} samples per prompt, accuracy {grpo['acc']}.")
    return " ".join(text)


def section(led: Ledger, figs: dict) -> str:
    from conformance.sheet import run_section
    led.section = "Interview questions"
    committed = runs.summaries()
    return "\n".join([
        "## Interview questions, answered by computation",
        "",
        run_section(led, derivation), "",
        run_section(led, baseline), "",
        run_section(led, clipping), "",
        run_section(led, critic, committed), "",
        run_section(led, kl_three_ways), "",
        run_section(led, dpo_vs_rl, committed),
    ])
