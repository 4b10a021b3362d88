"""``python -m refimpl.demo``: a few identities of the field, verified exactly, with their numbers.

Every number below is computed by enumerating all responses of a tiny tabular policy (two
prompts, tokens {0, 1} plus EOS, at most two tokens), so "unbiased" means equal to 1e-10, not
"close on average". Exit status 1 if any identity fails.
"""

from __future__ import annotations

import math
import sys

import torch

import refimpl
from refimpl import tabular as tab


def _line(ok: bool, claim: str, detail: str) -> bool:
    print(f"  [{'ok' if ok else 'FAIL'}] {claim:<58} {detail}")
    return ok


def main() -> int:
    torch.set_default_dtype(torch.float64)
    pol = tab.TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=2, seed=1)
    ref = tab.TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=2, seed=2)
    scores = torch.randn(2, pol.n_completions, generator=torch.Generator().manual_seed(3),
                         dtype=torch.float64)
    rewards = pol.scores_to_rewards(scores)
    L = pol.tree.max_len
    grad_J = pol.grad_J(rewards)
    rel = lambda a, b: float((a - b).norm() / b.norm())           # noqa: E731
    ok = True
    print(f"tabular policy: {pol.n_prompts} prompts, {pol.n_completions} responses each "
          f"(lengths 1-2), |grad J| = {float(grad_J.norm()):.6f}")

    print("\npolicy gradient and baselines (expected gradient over every G-tuple):")
    one = pol.tuples(1)
    R1 = scores[one.prompt, one.completion]

    def reinforce(batch):
        return torch.stack([refimpl.policy_gradient_loss(batch["logp"][k], R1[k], batch["mask"][k],
                                                         agg="seq-mean-token-sum")
                            for k in range(len(one))])
    g = -pol.expected_gradient(reinforce, one)
    ok &= _line(rel(g, grad_J) < 1e-10, "E[grad of policy_gradient_loss(R)] = grad J",
                f"rel. error {rel(g, grad_J):.1e}")
    for G in (2, 4):
        tup = pol.tuples(G)
        R = scores[tup.prompt, tup.completion]
        ids = torch.arange(len(tup)).repeat_interleave(G)
        loo = refimpl.leave_one_out_advantages(R.flatten(), ids).reshape(R.shape)
        g = -pol.expected_gradient(tab.pg_surrogate(loo), tup)
        ok &= _line(rel(g, grad_J) < 1e-10, f"leave-one-out (G={G}) is unbiased",
                    f"|E g| / |grad J| = {float(g.norm() / grad_J.norm()):.12f}")
        mean = refimpl.group_normalized_advantages(R.flatten(), ids, scale="none").reshape(R.shape)
        g = -pol.expected_gradient(tab.pg_surrogate(mean), tup)
        ok &= _line(rel(g, (1 - 1 / G) * grad_J) < 1e-10,
                    f"group mean, self included (G={G}): E g = (1 - 1/G) grad J",
                    f"factor {float(g.flatten() @ grad_J.flatten() / grad_J.norm() ** 2):.12f}, "
                    f"expected {1 - 1 / G:.12f}")
        std = refimpl.group_normalized_advantages(R.flatten(), ids, scale="group").reshape(R.shape)
        g = -pol.expected_gradient(tab.pg_surrogate(std), tup)
        ideal = pol.ideal_normalized_gradient(scores)
        cos = tab.cosine(g, ideal)
        ok &= _line(cos < 1 - 1e-6, f"group std normalisation (G={G}) is biased",
                    f"vs grad J/sigma: norm ratio {float(g.norm() / ideal.norm()):.4f}, "
                    f"cosine {cos:.4f}")

    print("\nKL estimators (exact expectations over responses drawn from pi):")
    lp, lq = pol.token_logp().detach(), ref.token_logp().detach()
    p = pol.probs().detach()
    kl = pol.kl(ref).detach()
    for kind in ("k1", "k2", "k3"):
        k = refimpl.kl_estimate(lp.reshape(-1, L), lq.reshape(-1, L),
                                pol.mask.repeat(2, 1), kind).reshape(lp.shape)
        e = (p * k.sum(-1)).sum(1)
        exact = kind != "k2"
        good = bool(torch.allclose(e, kl, rtol=0, atol=1e-12)) == exact
        ok &= _line(good, f"E[sum_t {kind}] {'=' if exact else '!='} KL(pi || pi_ref)",
                    f"{[round(float(x), 6) for x in e]} vs {[round(float(x), 6) for x in kl]}")

    print("\nGAE and returns (true V of the tabular policy, gamma = 0.9):")
    V, Q, A = pol.values(rewards, gamma=0.9)
    r_tok = pol.token_rewards(rewards).reshape(-1, L)
    V_tok = pol.along(V).reshape(-1, L)
    m = pol.mask.repeat(2, 1)
    for lam in (0.0, 0.95, 1.0):
        adv, _ = refimpl.gae(r_tok, V_tok, m, gamma=0.9, lam=lam)
        e, reach = pol.conditional_on_transition(adv.reshape(lp.shape))
        err = float(((e - A) * (reach > 0)).abs().max())
        ok &= _line(err < 1e-10, f"E[GAE(lam={lam}) | s_t, a_t] = A(s_t, a_t)", f"max error {err:.1e}")
    G_t = refimpl.discounted_returns(r_tok, m, gamma=0.9)
    e, _ = pol.conditional_on_state(G_t.reshape(lp.shape))
    err = float((e - V).abs().max())
    ok &= _line(err < 1e-10, "E[G_t | s_t] = V(s_t)", f"max error {err:.1e}")

    print("\npreferences:")
    zero = torch.zeros(1)
    d = float(refimpl.dpo_loss(zero, zero, zero, zero, beta=0.1)[0])
    ok &= _line(abs(d - math.log(2)) < 1e-12, "DPO loss at z = 0 is log 2", f"{d:.15f}")
    ls = 0.1
    z = torch.linspace(0.0, 5.0, 50001)
    loss = refimpl.dpo_loss(z, torch.zeros_like(z), torch.zeros_like(z), torch.zeros_like(z),
                            beta=1.0, label_smoothing=ls)
    z_star = float(z[loss.argmin()])
    ok &= _line(abs(z_star - math.log((1 - ls) / ls)) < 1e-3,
                f"DPO minimiser with label smoothing {ls}: log((1-ls)/ls)",
                f"{z_star:.4f} vs {math.log((1 - ls) / ls):.4f}")
    print("\nall identities hold" if ok else "\nSOME IDENTITIES FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
