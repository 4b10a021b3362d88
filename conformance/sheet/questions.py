"""The sheet's six interview questions, each answered by a short computation whose output is
embedded in the document and checked like every other number of the sheet."""

from __future__ import annotations

import math

import torch

from refimpl.tabular import TabularPolicy
from conformance.sheet import runs
from conformance.sheet.common import DTYPE, canonical, code_link, policy, scores_for, token_jacobian
from conformance.sheet.ledger import Ledger, sig


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

    def seq_logp(th):                      # log pi(y | x) by refimpl, from the logits of each prefix
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
    probs_jac = torch.autograd.functional.jacobian(lambda th: seq_logp(th).exp(), theta).reshape(P, C, -1)
    p = pol.probs().detach()
    step1 = float((probs_jac - p.unsqueeze(-1) * jac_seq).abs().max())
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
        return (wd[:, None, None, None] * pd[..., None, None] * weight.unsqueeze(-1) * jd).sum((0, 1, 2))
    step4 = _rel(expect(to_go), gJ)
    step5 = float(expect(past).norm() / gJ.norm())
    return "\n".join([
        "**1. Derive the policy-gradient theorem.** J(θ) = Σ_x μ(x) Σ_y π_θ(y∣x) R(x, y), with "
        "μ and R free of θ. Each step checked on the tabular policy:",
        "",
        f"- a response's probability is the product of its tokens' (refimpl's `token_logprobs` and "
        f"`sequence_logprob` against the product of softmax entries by hand): max difference "
        f"{led.bound('sequence probability = product of token probabilities', step0, 1e-12)}.",
        f"- log-derivative trick, ∇π(y∣x) = π(y∣x) ∇log π(y∣x) for every response: max difference "
        f"{led.bound('log-derivative trick', step1, 1e-12)}.",
        f"- only the policy's own factors carry θ (the transition, appending a token, is fixed), "
        f"so ∇log π(y∣x) = Σ_t ∇log π(y_t∣x, y_<t): refimpl's sequence log-probability "
        f"differentiated against the per-token scores summed, max difference "
        f"{led.bound('sequence score = sum of token scores', step2, 1e-12)}.",
        f"- so ∇J = Σ_x μ(x) Σ_y π(y∣x) ∇log π(y∣x) R = E[∇log π · R]: relative error against "
        f"autograd of the exact J {led.bound('score-function form of grad J', step3, 1e-12)}.",
        f"- with a reward on every token (3-token responses), weighting ∇log π(y_t∣·) by the "
        f"reward-to-go G_t gives ∇J too ({led.bound('reward-to-go form', step4, 1e-12)} relative), "
        f"because rewards earned before token t contribute "
        f"{led.bound('past rewards drop out', step5, 1e-12)} (relative to ∣∇J∣) in expectation.",
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
        "**2. Why does a baseline not bias the gradient?** Because the score has mean zero: "
        "Σ_y π(y∣x) ∇log π(y∣x) = ∇Σ_y π(y∣x) = ∇1 = 0. On the tabular policy that sum is "
        f"{led.bound('E[grad log pi] = 0', zero, 1e-12)} in every coordinate, and E[∇log π · (R − b)] "
        f"equals ∇J for b = −1, 0.5 and 3 ({led.bound('constant baselines unbiased', worst, 1e-12)} "
        "relative). The argument needs b independent of the sampled y: a baseline that includes the "
        "sample itself (the group mean) shrinks the gradient by 1 − 1/G, and a bootstrapped value "
        "biases it (the variance-reduction table).",
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
            why = ("clipped (r > 1 + ε)" if clipped and A > 0 else "clipped (r < 1 − ε)" if clipped
                   else f"dual clip (r > c = {c:g})" if dual else "unclipped")
            rows.append(f"| {A:+.0f} | {r:g} | "
                        f"{led.value(f'ppo objective A={A} r={r}', -float(loss.detach()), want_obj, 1e-12)} | "
                        f"{led.value(f'ppo gradient A={A} r={r}', grad_r, want, 1e-12)} | {why} |")
    return "\n".join([
        "**3. How does PPO's clipping work?** The ratio is not forced into [1 − ε, 1 + ε]; the "
        "objective stops rewarding moves beyond it. The min picks the clipped term only when "
        "the ratio has already moved in the direction the advantage favours, and there the "
        "gradient is exactly 0; on the other side the unclipped term is kept, so a ratio that "
        "moved against the advantage is always pulled back. Dual clip (c = 3) also caps the loss "
        f"of a negative advantage. From {code_link(ppo, 'refimpl.ppo_clip_loss')}, ε = {eps}, each "
        "value checked against the formula by hand:",
        "",
        "| A | r | objective | d objective / d r | regime |",
        "|---|---|---|---|---|",
        *rows,
    ])


def critic(led: Ledger, committed: dict) -> str:
    from conformance.sheet.variance import Setup
    s = Setup()
    G = 4
    V, _, _ = s.pol.values(s.rewards)
    loo = canonical("leave_one_out_advantages")
    _, var_loo = s.group(G, loo)
    _, var_none = s.group(G, lambda R, ids: R)

    def value_adv(Vtab):
        def adv(tup, r, m):
            v = s.pol.along(Vtab)[tup.prompt, tup.completion].reshape(r.shape)
            return canonical("discounted_returns")(r, m, 1.0) - v
        return adv
    _, var_critic = s.tokens(G, value_adv(V))
    gJ2 = float(s.grad_J.norm() ** 2)
    reduction = led.holds("the group baseline reduces variance", var_loo < var_none,
                          f"{sig(var_none / gJ2)} → {sig(var_loo / gJ2)}")
    grpo, ppo = committed.get("grpo"), committed.get("ppo")
    cost = ""
    if grpo and ppo:
        cost = (f" On the same task (reverse, {grpo['prompts']} prompts a step, "
                f"{grpo['group']} samples each), the committed GRPO run held {grpo['models']} models "
                f"and took {grpo['step_s']} s a step; PPO held {ppo['models']} and took "
                f"{ppo['step_s']} s a step (its critic is a second trainable model, with its own "
                f"optimiser state and forward and backward passes).")
    return "\n".join([
        "**4. Why does GRPO not need a critic?** Its baseline is computed from the other samples "
        "of the same prompt, so no value model is trained or stored; it pays with G samples per "
        f"prompt. Exactly, with G = {G} samples of a prompt on the tabular policy (relative "
        "variance of the gradient estimate, as in the table above): no baseline → leave-one-out "
        f"group baseline {reduction}; a perfect critic (true V(s_t) subtracted per token) "
        f"{sig(var_critic / gJ2)}. The group baseline is unbiased without any learned function "
        "(leave-one-out; GRPO's own mean-and-std version is biased, see the table), while a "
        "critic is only as good as its fit, and is unbiased only while it does not bootstrap."
        + cost,
    ])


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
            grad_cell = "0: " + led.bound("E[grad k1] = 0", float(g.norm() / g_forward.norm()), 1e-12)
        else:
            grad_cell = f"{name}: " + led.bound(f"E[grad {kind}] = {name}", _rel(g, want), 1e-12)
        exact = kind != "k2"
        value_cell = (f"KL: {led.bound(f'E[{kind}] = KL', abs(float(value - forward)), 1e-12)}" if exact
                      else led.holds("E[k2] is not KL", abs(float(value - forward)) > 1e-3,
                                     f"{sig(float(value))}, not KL"))
        rows.append(f"| {kind} | {value_cell} | {grad_cell} |")
    return "\n".join([
        "**5. How is the KL computed in practice?** Sample y from the policy, score it under the "
        "policy and under the frozen reference, and sum a per-token estimate of the log-ratio. "
        "Which estimate matters twice: for its value (a reward penalty, a logged metric) and, when "
        "the KL is a loss term, for its gradient. Exactly, on a one-token policy with 4 outcomes "
        "against a second one (the sampling held fixed, as `loss.backward()` does), KL(π ‖ π_ref) "
        f"= {sig(float(forward))}:",
        "",
        "| estimator | expected value (residual against the true value) | expected gradient "
        "as a loss (relative residual) |",
        "|---|---|---|",
        *rows,
        "",
        "So k1 is an unbiased KL *value* whose expected gradient is zero (it regularises nothing "
        "as a loss); k2's value is biased but its gradient is the KL's; k3's value is unbiased "
        "and never negative, but as a loss it follows the gradient of the *other* KL direction. "
        f"From {code_link(kl_fn, 'refimpl.kl_estimate')}.",
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
        "E[r] − β KL(π ‖ π_ref) is maximised by π* ∝ π_ref · exp(r/β), and DPO's expected loss on "
        "preferences drawn by Bradley-Terry from the same r is stationary at that π*. On a "
        f"one-token tabular policy (β = {beta}), at π*: the gradient of DPO's population loss is "
        f"{led.bound('DPO population gradient zero at pi*', g_dpo, 1e-12)} of its size at π_ref, "
        f"and the RL objective's gradient {led.bound('RL objective gradient zero at pi*', g_rl, 1e-12)} "
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
