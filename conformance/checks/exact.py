"""Exact-expectation checks: the adapter's estimator fed every outcome of a tiny tabular policy
(``refimpl.tabular``: two prompts, tokens {0, 1} plus EOS, responses of at most two or three
tokens), so an expectation or an expected gradient built from its outputs is a finite sum and
"unbiased" is decided to 1e-10, not sampled.

Every adapter call stays small (at most a few thousand rows): group estimators get every G-tuple
of one prompt's responses at once, each tuple its own group id; whitening gets one call per
batch (a one-token bandit, so batches of 6 are 462 calls). Where an estimator has an ``eps``, the
expectation is computed with that eps, as refimpl computes it; unbiasedness claims are for the
estimators without one. A float32-only adapter is held to float32 tolerance (the output's dtype
selects it). Passing rows carry the exact numbers in their note; failing rows in their message.
"""

from __future__ import annotations

import math

import torch

from conformance.core import CheckFailed, Context, Tolerance, check
from refimpl import tabular as tab
import refimpl

F64 = torch.float64
EXACT = Tolerance(1e-10, 2e-5, "float64: finite sums of at most ~10^4 terms of size ~1, a few "
                  "hundred ulps; float32 (an adapter computing in float32): 2e-5 relative")


def _policy(max_len=2, seed=1, n_prompts=2):
    pol = tab.TabularPolicy.random(n_prompts=n_prompts, n_tokens=2, max_len=max_len, seed=seed)
    scores = torch.randn(pol.n_prompts, pol.n_completions,
                         generator=torch.Generator().manual_seed(seed + 2), dtype=F64)
    return pol, scores


def _factor(g, ref):
    return float((g.flatten() @ ref.flatten()) / (ref.flatten() @ ref.flatten()))


def _group_advantages(ctx: Context, tup, scores, **kwargs):
    """One adapter call on every tuple; returns (advantages (K, G) float64, output dtype)."""
    R = scores[tup.prompt, tup.completion]
    ids = torch.arange(len(tup)).repeat_interleave(tup.size)
    out = ctx.expect_tensor(ctx.call(R.flatten(), ids, **kwargs), (R.numel(),), None, "advantages")
    return out.detach().to(F64).reshape(R.shape), out.dtype


def _all_rows(pol):
    """Every response of every prompt as one (P*C, L) batch."""
    L = pol.tree.max_len
    return pol.mask.repeat(pol.n_prompts, 1), L


# --- group estimators -----------------------------------------------------------------------------

@check("leave_one_out_advantages/exact-unbiased", kind="exact", tol=EXACT,
       clause="Ahmadian et al. 2024, arXiv:2402.14740 (RLOO); Kool et al. 2019",
       equation="E[(1/G) sum_i A_i grad log pi(y_i)] = grad J exactly, for G = 2, 3, 4",
       hint="the baseline must exclude the sample itself: mean over the other G - 1 samples",
       mutants=("loo_includes_self",),          # dividing by G: a wrong value, still unbiased
       derivation="""\
E[A_i grad log pi(y_i)] = E[R_i grad log pi(y_i)] - E[b_i grad log pi(y_i)], and
b_i = mean_{j != i} R_j is independent of y_i, so the second term is E[b_i] E[grad log pi] = 0.
Enumerated: every G-tuple of one prompt's 7 responses (multisets with multinomial weights),
the adapter's advantages for all tuples in one call, the REINFORCE surrogate differentiated.""")
def exact_loo(ctx: Context):
    pol, scores = _policy()
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    factors = []
    for G in (2, 3, 4):
        ctx.on(f"every {G}-tuple")
        tup = pol.tuples(G)
        A, dtype = _group_advantages(ctx, tup, scores)
        g = -pol.expected_gradient(tab.pg_surrogate(A), tup)
        factors.append(f"{_factor(g, grad_J):.6f} (G = {G})")
        ctx.compare(g, grad_J, f"E[grad] for G = {G}", dtype=dtype,
                    explain=f"bias factor {_factor(g, grad_J):.6f} (G = {G}), expected 1")
    ctx.note("bias factor " + ", ".join(factors) + ", expected 1")


@check("group_normalized_advantages/exact-mean-baseline-scales-gradient", kind="exact", tol=EXACT,
       clause="API.md group_normalized_advantages scale='none' (Dr. GRPO, arXiv:2503.20783)",
       equation="scale='none': E[grad] = (1 - 1/G) grad J exactly",
       hint="scale='none' subtracts the group mean *including* the sample itself",
       mutants=("group_none_excludes_self", "group_mean_not_subtracted"),
       derivation="""\
A_i = R_i - (1/G) sum_j R_j = (1 - 1/G) R_i - (1/G) sum_{j != i} R_j; the second part is
independent of y_i and vanishes in expectation, leaving (1 - 1/G) E[R_i grad log pi(y_i)].""")
def exact_group_mean(ctx: Context):
    pol, scores = _policy()
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    factors = []
    for G in (2, 4, 6):
        ctx.on(f"every {G}-tuple")
        tup = pol.tuples(G)
        A, dtype = _group_advantages(ctx, tup, scores, scale="none")
        g = -pol.expected_gradient(tab.pg_surrogate(A), tup)
        f = _factor(g, grad_J)
        factors.append(f"{f:.6f} (G = {G})")
        ctx.compare(g, (1 - 1 / G) * grad_J, f"E[grad] for G = {G}", dtype=dtype,
                    explain=f"bias factor {f:.6f} (G = {G}), expected {1 - 1 / G:.6f}")
    ctx.note("bias factor " + ", ".join(factors) + "; expected 1 - 1/G")


@check("group_normalized_advantages/exact-std-normalisation-bias", kind="exact", tol=EXACT,
       clause="Shao et al. 2024, arXiv:2402.03300, Sec. 4.1.2; Liu et al. 2025, arXiv:2503.20783, Sec. 3.1",
       equation="scale='group': E[grad] equals refimpl's exact value (with the same eps); "
                "reported against the ideal grad J / sigma",
       hint="the exact bias differs from refimpl's: check the std (unbiased, per group) and "
            "where eps is added",
       mutants=("group_std_biased", "group_std_over_batch"),
       derivation="""\
Dividing by the sample std makes A_i a nonlinear function of the group, so E[A_i | y_i = c]
is no longer proportional to R(c) - E[R]: the expected gradient is the policy gradient of an
'effective reward' and is not parallel to grad J / sigma. Its exact value is the sum over all
G-tuples; the note gives |E g| / |grad J/sigma| and the cosine.""")
def exact_group_std(ctx: Context):
    pol, scores = _policy()
    ideal = pol.ideal_normalized_gradient(scores, per_prompt=True)
    notes = []
    for scale in ("group",):        # 'batch' over one group per call would equal 'group'
        for G in (2, 4, 6):
            ctx.on(f"every {G}-tuple scale={scale}")
            tup = pol.tuples(G)
            R = scores[tup.prompt, tup.completion]
            if scale == "batch":
                # the batch std spans one call: one call per tuple (the batch is one group)
                one_group = torch.zeros(G, dtype=torch.int64)
                outs = [ctx.call(R[k], one_group, scale="batch", eps=1e-6) for k in range(len(tup))]
                A = torch.stack([ctx.expect_tensor(o, (G,), None).detach().to(F64) for o in outs])
                dtype = outs[0].dtype
                ref = torch.stack([refimpl.group_normalized_advantages(R[k], one_group, "batch", 1e-6)
                                   for k in range(len(tup))])
            else:
                A, dtype = _group_advantages(ctx, tup, scores, scale="group", eps=1e-6)
                ref = refimpl.group_normalized_advantages(
                    R.flatten(), torch.arange(len(tup)).repeat_interleave(G), "group", 1e-6)
            g = -pol.expected_gradient(tab.pg_surrogate(A), tup)
            g_ref = -pol.expected_gradient(tab.pg_surrogate(ref.reshape(len(tup), G)), tup)
            ratio, cos = float(g.norm() / ideal.norm()), tab.cosine(g, ideal)
            notes.append(f"{scale}, G = {G}: |E g|/|grad J/sigma| = {ratio:.6f}, cosine {cos:.6f}")
            ctx.compare(g, g_ref, f"E[grad] for scale={scale}, G = {G}", dtype=dtype,
                        explain=f"ratio {ratio:.6f}, cosine {cos:.6f}; refimpl's ratio "
                                f"{float(g_ref.norm() / ideal.norm()):.6f}")
    ctx.note("; ".join(notes))


@check("batch_normalized_advantages/exact-bias-shrinks-with-batch-size", kind="exact", tol=EXACT,
       clause="Hu et al. 2025, arXiv:2501.03262v9, Sec. 3.1, Eq. 5 (REINFORCE++ global normalisation)",
       equation="E[grad] over every batch of N draws equals refimpl's, and |E g - grad J/sigma| "
                "shrinks strictly for N = 2..6",
       hint="whiten over the real entries of the whole batch: (A - mean) / sqrt(var + eps), var "
            "unbiased",
       mutants=("whiten_biased_var",),
       derivation="""\
A one-token bandit (2 prompts x 3 responses) drawn N times; each batch is one adapter call
with mask=None. As N grows the batch mean and std converge to E[R] and sigma (under the prompt
mixture), so the expected gradient approaches grad J / sigma; the note lists the gap per N.""")
def exact_whitening(ctx: Context):
    pol, scores = _policy(max_len=1, seed=5)
    ideal = pol.ideal_normalized_gradient(scores, per_prompt=False)
    gaps = []
    for N in range(2, 7):
        ctx.on(f"every batch of {N} draws")
        tup = pol.tuples(N, same_prompt=False)
        R = scores[tup.prompt, tup.completion]
        outs = [ctx.call(R[k], None, 1e-8) for k in range(len(tup))]
        A = torch.stack([ctx.expect_tensor(o, (N,), None).detach().to(F64) for o in outs])
        ref = torch.stack([refimpl.batch_normalized_advantages(R[k], None, 1e-8) for k in range(len(tup))])
        g = -pol.expected_gradient(tab.pg_surrogate(A), tup)
        g_ref = -pol.expected_gradient(tab.pg_surrogate(ref), tup)
        ctx.compare(g, g_ref, f"E[grad] for N = {N}", dtype=outs[0].dtype)
        gaps.append(float((g - ideal).norm() / ideal.norm()))
    text = ", ".join(f"{x:.6f} (N = {n})" for n, x in zip(range(2, 7), gaps))
    ctx.require(all(b < a for a, b in zip(gaps, gaps[1:])),
                f"relative gap to grad J / sigma does not shrink with N: {text}")
    ctx.note(f"relative gap to grad J / sigma: {text}")


# --- KL -------------------------------------------------------------------------------------------

def _kl_pair():
    pol, _ = _policy(max_len=2, seed=21)
    ref, _ = _policy(max_len=2, seed=22)
    return pol, ref


def _kl_call(ctx, pol, ref, kind, differentiable=False):
    mask, L = _all_rows(pol)
    lp = pol.token_logp()
    lp = lp if differentiable else lp.detach()
    out = ctx.call(lp.reshape(-1, L), ref.token_logp().detach().reshape(-1, L), mask, kind)
    out = ctx.expect_tensor(out, (mask.shape[0], L), None, f"kl_estimate(kind={kind!r})")
    k = torch.where(mask, out.to(F64), torch.zeros((), dtype=F64)).sum(-1)
    return k.reshape(pol.n_prompts, -1), out.dtype


@check("kl_estimate/exact-expectations", kind="exact", tol=EXACT,
       clause="Schulman 2020, 'Approximating KL Divergence' (k1, k2, k3)",
       equation="E_pi[sum_t k1] = E_pi[sum_t k3] = KL(pi || pi_ref); E_pi[sum_t k2] = "
                "E_pi[sum_t l_t^2 / 2]",
       hint="k1 = l, k2 = l^2 / 2, k3 = exp(-l) - 1 + l with l = logp - ref_logp",
       mutants=("k3_ratio_inverted", "k1_ratio_inverted", "k2_missing_half", "k3_log_sign_flipped"),
       derivation="""\
E_{a~pi}[exp(-l) - 1] = sum_a pi(a) ref(a)/pi(a) - 1 = 0, so E[k3] = E[k1] = E[l] = KL per
token; summed along the response (chain rule of KL) this is the sequence KL. k2 is biased:
its exact expectation is reported beside the KL.""")
def exact_kl_expectations(ctx: Context):
    pol, ref = _kl_pair()
    p = pol.probs().detach()
    kl = pol.kl(ref).detach()
    l = pol.token_logp().detach() - ref.token_logp().detach()
    k2_exact = (p * (0.5 * l ** 2).sum(-1)).sum(1)
    values = {}
    for kind, truth in (("k1", kl), ("k3", kl), ("k2", k2_exact)):
        with ctx.variant():
            ctx.on(f"every response kind={kind}")
            k, dtype = _kl_call(ctx, pol, ref, kind)
            e = (p * k).sum(1)
            values[kind] = e
            ctx.compare(e, truth, f"E[sum_t {kind}] per prompt", dtype=dtype)
    ctx.note(f"KL = {[round(float(x), 6) for x in kl]}; " + ", ".join(
        f"E[{k}] = {[round(float(x), 6) for x in v]}" for k, v in sorted(values.items())))


@check("kl_estimate/exact-loss-gradients", kind="exact", tol=EXACT,
       clause="Tang & Munos 2025, arXiv:2506.09477; Liu et al. 2025, arXiv:2510.01555",
       equation="as a loss term on tokens from pi: E[grad k1] = 0; E[grad k2] = sum_s d(s) grad "
                "KL(pi(.|s) || ref(.|s)); E[grad k3] = sum_s d(s) grad KL(ref(.|s) || pi(.|s))",
       hint="the gradient must flow through logp only (ref_logp is fixed); k3's derivative is "
            "1 - exp(-l)",
       mutants=("k3_ratio_inverted", "k2_missing_half"),
       derivation="""\
grad k1 = grad log pi: zero mean under pi. grad k2 = l grad log pi: the per-state gradient of
KL(pi || ref) with the state distribution held fixed. grad k3 = (1 - ref/pi) grad log pi, whose
mean is -sum_a ref(a) grad log pi(a) = grad KL(ref || pi): the *forward* KL. None of the three
is the gradient of the sequence-level KL(pi || ref) (the note gives the cosines); k1 used as a
reward (score function) is.""")
def exact_kl_gradients(ctx: Context):
    pol, ref = _kl_pair()
    w = pol.prompt_weights
    true_grad = pol.grad((w * pol.kl(ref)).sum())
    d = pol.state_visitation().detach()
    frozen = {False: pol.grad((w.unsqueeze(1) * d * pol.state_kl(ref)).sum()),
              True: pol.grad((w.unsqueeze(1) * d * pol.state_kl(ref, reverse=True)).sum())}
    cosines = []
    for kind, truth in (("k1", torch.zeros_like(true_grad)), ("k2", frozen[False]), ("k3", frozen[True])):
        with ctx.variant():
            ctx.on(f"every response kind={kind}")
            k, dtype = _kl_call(ctx, pol, ref, kind, differentiable=True)
            g = pol.grad((w.unsqueeze(1) * pol.probs().detach() * k).sum())
            if kind != "k1":
                cosines.append(f"{kind}: cosine with grad KL(pi||ref) {tab.cosine(g, true_grad):.6f}")
            ctx.compare(g, truth, f"E[grad sum_t {kind}]", dtype=dtype)
    ctx.note("k1 gives 0; " + "; ".join(cosines))


@check("kl_penalized_rewards/exact-shaped-return", kind="exact", tol=EXACT,
       clause="Ziegler et al. 2019, arXiv:1909.08593, Sec. 2; API.md kl_penalized_rewards",
       equation="E_pi[sum_t r_t] = E_pi[score] - beta KL(pi || pi_ref) with kind='k1'",
       hint="-beta k on every real token and the score added once, at each row's last real token",
       mutants=("kl_reward_sign_flipped", "score_at_padded_end"),
       derivation="""\
sum_t r_t = score - beta sum_t l_t, and E_pi[sum_t l_t] = KL(pi || pi_ref) (chain rule).""")
def exact_shaped_return(ctx: Context):
    pol, ref = _kl_pair()
    _, scores = _policy(max_len=2, seed=23)
    mask, L = _all_rows(pol)
    beta = 0.3
    ctx.on("every response beta=0.3")
    out = ctx.call(scores.reshape(-1), pol.token_logp().detach().reshape(-1, L),
                   ref.token_logp().detach().reshape(-1, L), mask, beta, "k1")
    out = ctx.expect_tensor(out, (mask.shape[0], L), None)
    ret = torch.where(mask, out.to(F64), torch.zeros((), dtype=F64)).sum(-1).reshape(pol.n_prompts, -1)
    p = pol.probs().detach()
    ctx.compare((p * ret).sum(1), (p * scores).sum(1) - beta * pol.kl(ref).detach(),
                "E[shaped return] per prompt", dtype=out.dtype)


# --- returns and GAE ------------------------------------------------------------------------------

def _mdp():
    pol, _ = _policy(max_len=3, seed=11)
    rewards = torch.randn(pol.theta.shape, generator=torch.Generator().manual_seed(12), dtype=F64)
    return pol, rewards


@check("discounted_returns/exact-expected-return-is-value", kind="exact", tol=EXACT,
       clause="Sutton & Barto 2018, Sec. 3.5 (V and Q as expected returns)",
       equation="E[G_t | s_t] = V^pi(s_t) and E[G_t | s_t, a_t] = Q^pi(s_t, a_t), gamma = 0.9",
       hint="G_t = r_t + gamma G_{t+1}, accumulated backwards from the last real token",
       mutants=("returns_forward_in_time",),
       derivation="""\
V and Q come from backward induction over the prefix tree; the adapter's returns for every
response are averaged with the exact conditional probabilities of the responses through each
prefix (and each (prefix, token)).""")
def exact_returns(ctx: Context):
    pol, rewards = _mdp()
    V, Q, _ = pol.values(rewards, 0.9)
    mask, L = _all_rows(pol)
    ctx.on("every response gamma=0.9")
    out = ctx.expect_tensor(ctx.call(pol.token_rewards(rewards).reshape(-1, L), mask, 0.9),
                            mask.shape, None)
    G = out.detach().to(F64).reshape(pol.n_prompts, -1, L)
    e, reach = pol.conditional_on_state(G)
    ctx.compare(e[reach > 0], V[reach > 0], "E[G_t | s_t] vs V(s_t)", dtype=out.dtype)
    e, reach = pol.conditional_on_transition(G)
    ctx.compare(e[reach > 0], Q[reach > 0], "E[G_t | s_t, a_t] vs Q(s_t, a_t)", dtype=out.dtype)


@check("gae/exact-advantage-with-true-values", kind="exact", tol=EXACT,
       clause="Schulman et al. 2015, arXiv:1506.02438, Sec. 3, Eq. 16",
       equation="with V = V^pi: E[A_hat_t | s_t, a_t] = A^pi(s_t, a_t) for lam in {0, 0.5, 0.95, 1}; "
                "E[returns_t | s_t, a_t] = Q^pi(s_t, a_t)",
       hint="delta_t = r_t + gamma V(s_{t+1}) - V(s_t) with V = 0 after the last real token; "
            "A_t = delta_t + gamma lam A_{t+1}, accumulated backwards",
       mutants=("gae_off_by_one_bootstrap", "gae_forward_accumulation", "gae_returns_without_value"),
       derivation="""\
With the true V, E[delta_{t+l} | s_t, a_t] = 0 for l >= 1 and E[delta_t | s_t, a_t] = Q - V =
A, so every lambda-weighted sum of TD residuals has conditional mean A^pi(s_t, a_t).""")
def exact_gae(ctx: Context):
    pol, rewards = _mdp()
    gamma = 0.9
    V, Q, A = pol.values(rewards, gamma)
    mask, L = _all_rows(pol)
    for lam in (0.0, 0.5, 0.95, 1.0):
        ctx.on(f"every response gamma=0.9 lam={lam}")
        out = ctx.call(pol.token_rewards(rewards).reshape(-1, L), pol.along(V).reshape(-1, L),
                       mask, gamma, lam)
        adv, ret = ctx.expect_pair(out, mask.shape, None)
        for name, x, truth in (("advantages", adv, A), ("returns", ret, Q)):
            e, reach = pol.conditional_on_transition(x.detach().to(F64).reshape(pol.n_prompts, -1, L))
            ctx.compare(e[reach > 0], truth[reach > 0],
                        f"E[{name} | s, a] vs {'A' if name == 'advantages' else 'Q'}(s, a), lam={lam}",
                        dtype=adv.dtype)


# --- losses ---------------------------------------------------------------------------------------

def _per_response(ctx, pol, scores, make_call, sampler=None):
    """Exact E[grad] of a loss called once per response (a batch of one), and the output dtype."""
    tup = pol.tuples(1)
    R = scores[tup.prompt, tup.completion]
    dtypes = []

    def surrogate(batch):
        losses = []
        for k in range(len(tup)):
            out = make_call(k, batch["logp"][k], R[k], batch["mask"][k])
            out = ctx.expect_tensor(out, (), None, "loss")
            dtypes.append(out.dtype)
            losses.append(out.to(F64))
        return torch.stack(losses)
    g = pol.expected_gradient(surrogate, tup, sampler=sampler)
    return g, dtypes[0]


@check("policy_gradient_loss/exact-policy-gradient-theorem", kind="exact", tol=EXACT,
       clause="Sutton et al. 1999, Thm. 1; Williams 1992; Liu et al. 2025, arXiv:2503.20783, Sec. 3.1",
       equation="agg='seq-mean-token-sum', A = R(y): E[grad loss] = -grad J exactly; token-mean "
                "weights each response by 1/|y| (the length bias, reported)",
       hint="loss = aggregate(-A * logp); seq-mean-token-sum sums each row's tokens",
       mutants=("pg_sign_flipped", "pg_ignores_agg"),
       derivation="""\
With one response per batch, seq-mean-token-sum gives -R(y) log pi(y), whose expected gradient
is -grad J. token-mean and seq-mean-token-mean give -R(y)/|y| log pi(y): the gradient of
E[R(y)/|y|], a length bias (Dr. GRPO); the note reports its norm ratio and cosine with grad J.""")
def exact_pg(ctx: Context):
    pol, scores = _policy(max_len=2, seed=31)
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    ctx.on("every response agg=seq-mean-token-sum")
    g, dtype = _per_response(ctx, pol, scores, lambda k, lp, A, m: ctx.call(lp, A, m, "seq-mean-token-sum"))
    ctx.compare(-g, grad_J, "-E[grad loss] vs grad J", dtype=dtype)
    ctx.on("every response agg=token-mean")
    g_tm, dtype = _per_response(ctx, pol, scores, lambda k, lp, A, m: ctx.call(lp, A, m, "token-mean"))
    lengths = pol.tree.lengths.to(F64)
    ctx.compare(-g_tm, pol.grad_J(pol.scores_to_rewards(scores / lengths)),
                "token-mean: -E[grad loss] vs grad E[R/|y|]", dtype=dtype)
    ctx.note(f"token-mean: |E g| / |grad J| = {float(g_tm.norm() / grad_J.norm()):.6f}, cosine "
             f"{tab.cosine(-g_tm, grad_J):.6f} (length weighting 1/|y|)")


@check("ppo_clip_loss/exact-gradient", kind="exact", tol=EXACT,
       clause="Schulman et al. 2017, arXiv:1707.06347, Eq. 7",
       equation="at theta = theta_old: E[grad L^CLIP] = -grad J; away from it (responses from "
                "pi_old): E_old[grad L^CLIP] equals refimpl's exact value",
       hint="ratio exp(logp - old_logp); per token max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))",
       mutants=("ppo_ratio_inverted", "ppo_min_max_swapped"),
       derivation="""\
At r = 1 nothing is clipped and grad r = grad log pi, so the surrogate's gradient is the policy
gradient. Off policy, each response from pi_old is weighted by its exact probability under
pi_old, and the adapter's per-response losses are differentiated through logp.""")
def exact_ppo(ctx: Context):
    pol, scores = _policy(max_len=2, seed=31)
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    ctx.on("every response theta=theta_old")
    g, dtype = _per_response(ctx, pol, scores, lambda k, lp, A, m: ctx.call(
        lp, lp.detach(), A, m, 0.2, 0.28, None, "seq-mean-token-sum"))
    ctx.compare(-g, grad_J, "-E[grad loss] at theta_old vs grad J", dtype=dtype)
    old = tab.TabularPolicy(pol.theta.detach() + 0.6 * torch.randn(
        pol.theta.shape, generator=torch.Generator().manual_seed(5), dtype=F64), 2, 2)
    tup = pol.tuples(1)
    old_lp = old.token_logp().detach()[tup.prompt, tup.completion]

    def call(k, lp, A, m):
        return ctx.call(lp, old_lp[k], A, m, 0.2, 0.28, None, "seq-mean-token-sum")

    def ref_call(k, lp, A, m):
        return refimpl.ppo_clip_loss(lp, old_lp[k], A, m, 0.2, 0.28, None, "seq-mean-token-sum")
    ctx.on("every response from pi_old, ratios on both sides of the clip range")
    g, dtype = _per_response(ctx, pol, scores, call, sampler=old)
    g_ref, _ = _per_response(ctx, pol, scores, ref_call, sampler=old)
    ctx.compare(g, g_ref, "E_old[grad loss] vs refimpl's", dtype=dtype)


def _golden_min(f, lo, hi, iters=200):
    """Minimiser of a unimodal f on [lo, hi] by golden-section search (values only)."""
    phi = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - phi * (b - a), a + phi * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - phi * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + phi * (b - a)
            fd = f(d)
    return (a + b) / 2


MINIMISER = Tolerance(1e-6, 2e-3, "a golden-section search on loss values locates a quadratic "
                      "minimum to about sqrt(machine eps) times its scale")


@check("dpo_loss/exact-minimiser-with-label-smoothing", kind="exact", tol=MINIMISER,
       clause="Mitchell 2023, cDPO note, Eq. 3; Rafailov et al. 2023, arXiv:2305.18290, Eq. 7",
       equation="label smoothing eps: the per-pair loss is minimised at z* = log((1 - eps) / eps)",
       hint="loss = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z); smoothing weights the "
            "*reversed* preference by eps",
       mutants=("dpo_smoothing_swapped", "dpo_sign_flipped"),
       derivation="""\
d/dz [-(1 - eps) log sigmoid(z) - eps log sigmoid(-z)] = sigmoid(z) - (1 - eps) = 0 at
sigmoid(z*) = 1 - eps. The minimiser is found from the adapter's loss by golden-section search
over the policy's chosen log-prob, with beta = 1 so that z = h.""")
def exact_dpo(ctx: Context):
    for eps in (0.1, 0.25):
        ctx.on(f"one pair label_smoothing={eps}")
        zero = torch.zeros(1, dtype=F64)

        def f(z):
            out = ctx.call(torch.tensor([z], dtype=F64), zero, zero, zero, 1.0, eps)
            return float(ctx.expect_tensor(out, (1,), None)[0])
        z_star = _golden_min(f, -20.0, 20.0)
        truth = math.log((1 - eps) / eps)
        ctx.compare(torch.tensor(z_star), torch.tensor(truth), f"minimiser z* (eps = {eps})",
                    explain=f"found {z_star:.6f}, expected log((1-eps)/eps) = {truth:.6f}")
    ctx.note("z* = log 9 = 2.197225 (eps = 0.1) and log 3 = 1.098612 (eps = 0.25) recovered")


@check("ipo_loss/exact-minimiser", kind="exact", tol=MINIMISER,
       clause="Azar et al. 2024, arXiv:2310.12036v2, Eq. 17",
       equation="the per-pair loss (h - 1/(2 tau))^2 is minimised at h* = 1/(2 tau)",
       hint="the target margin is 1/(2 tau), not 1/tau", mutants=("ipo_tau_not_halved",),
       derivation="The IPO loss is a square centred at 1/(2 tau); found by golden-section search.")
def exact_ipo(ctx: Context):
    for tau in (0.1, 0.5):
        ctx.on(f"one pair tau={tau}")
        zero = torch.zeros(1, dtype=F64)

        def f(h):
            return float(ctx.expect_tensor(ctx.call(torch.tensor([h], dtype=F64), zero, zero, zero,
                                                    tau), (1,), None)[0])
        h_star = _golden_min(f, -20.0, 20.0)
        ctx.compare(torch.tensor(h_star), torch.tensor(1 / (2 * tau)), f"minimiser h* (tau = {tau})",
                    explain=f"found {h_star:.6f}, expected 1/(2 tau) = {1 / (2 * tau):.6f}")


@check("bradley_terry_loss/exact-preference-probability-recovered", kind="exact", tol=MINIMISER,
       clause="Bradley & Terry 1952; Ouyang et al. 2022, arXiv:2203.02155, Eq. 1",
       equation="if y_1 beats y_2 with probability p, the expected loss p l(d) + (1 - p) l(-d) is "
                "minimised where sigmoid(d*) = p",
       hint="loss = -log sigmoid(r_chosen - r_rejected): chosen first",
       mutants=("bt_sign_flipped",),
       derivation="""\
d/dd [-p log sigmoid(d) - (1 - p) log sigmoid(-d)] = sigmoid(d) - p: the reward difference that
minimises the expected loss is the log-odds of the true preference probability.""")
def exact_bt(ctx: Context):
    for p in (0.3, 0.8):
        ctx.on(f"one pair p={p}")
        zero = torch.zeros(1, dtype=F64)

        def f(d):
            x = torch.tensor([d], dtype=F64)
            won = ctx.expect_tensor(ctx.call(x, zero), (1,), None)[0]
            lost = ctx.expect_tensor(ctx.call(zero, x), (1,), None)[0]
            return float(p * won + (1 - p) * lost)
        d_star = _golden_min(f, -20.0, 20.0)
        recovered = 1 / (1 + math.exp(-d_star))
        ctx.compare(torch.tensor(recovered), torch.tensor(p), f"sigmoid(d*) (p = {p})",
                    explain=f"recovered {recovered:.6f}, expected {p}")


__all__ = ["CheckFailed"]
