"""The policy-gradient theorem and PPO's surrogate, exactly, on the tabular policy.

Responses have one to three tokens, so how a loss aggregates over tokens changes what it
optimises; every expectation below is a finite sum over all responses (float64, 1e-10).
"""

import torch

from refimpl.tabular import TabularPolicy
from tests.harness import against, assert_close

EXACT = 1e-10


def _setup(seed=31):
    pol = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=3, seed=seed)
    scores = torch.randn(pol.n_prompts, pol.n_completions,
                         generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return pol, scores


def _per_row(loss_fn, tup, scores):
    """A surrogate calling ``loss_fn(logp, advantages, mask)`` once per row of ``tup``: each
    row is one sampled batch, as a trainer would see it."""
    def surrogate(batch):
        R = scores[batch["prompt"], batch["completion"]]
        return torch.stack([loss_fn(batch["logp"][k], R[k], batch["mask"][k])
                            for k in range(len(tup))])
    return surrogate


@against("pg_sign_flipped", "pg_ignores_agg")
def test_policy_gradient_theorem_through_policy_gradient_loss(rf):
    """E[grad policy_gradient_loss(logp, R(y), agg='seq-mean-token-sum')] = -grad J, for batches
    of one and of two responses (Sutton et al. 1999, Thm. 1; Williams 1992)."""
    pol, scores = _setup()
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    for n in (1, 2):
        tup = pol.tuples(n)
        loss = lambda lp, A, m: rf.policy_gradient_loss(lp, A, m, agg="seq-mean-token-sum")  # noqa: E731
        g = pol.expected_gradient(_per_row(loss, tup, scores), tup)
        assert_close(g, -grad_J, EXACT, f"E[grad loss] vs -grad J (batches of {n})")


@against("pg_ignores_agg")
def test_token_normalised_modes_reweight_the_reward_by_length(rf):
    """With one response per batch, token-mean and seq-mean-token-mean optimise E[R(y) / |y|]
    (a length bias: Dr. GRPO, arXiv:2503.20783, Sec. 3.1); seq-mean-token-sum-norm with
    norm_len = L optimises E[R(y)] / L, the right direction at a constant scale."""
    pol, scores = _setup()
    tup = pol.tuples(1)
    lengths = pol.tree.lengths.to(torch.float64)
    L = pol.tree.max_len
    for mode in ("token-mean", "seq-mean-token-mean"):
        loss = lambda lp, A, m: rf.policy_gradient_loss(lp, A, m, agg=mode)  # noqa: E731
        g = pol.expected_gradient(_per_row(loss, tup, scores), tup)
        biased = pol.grad_J(pol.scores_to_rewards(scores / lengths))
        assert_close(g, -biased, EXACT, f"{mode}: E[grad loss] vs -grad E[R / |y|]")
    loss = lambda lp, A, m: rf.policy_gradient_loss(lp, A, m, agg="seq-mean-token-sum-norm",  # noqa: E731
                                                   norm_len=L)
    g = pol.expected_gradient(_per_row(loss, tup, scores), tup)
    assert_close(g, -pol.grad_J(pol.scores_to_rewards(scores)) / L, EXACT,
          "seq-mean-token-sum-norm: E[grad loss] vs -grad J / L")


@against("ppo_ratio_inverted")
def test_exact_ppo_gradient_at_the_old_policy_is_the_policy_gradient(rf):
    """At theta = theta_old every ratio is 1: E[grad L^CLIP] = -grad J (PPO, arXiv:1707.06347)."""
    pol, scores = _setup()
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    tup = pol.tuples(1)
    loss = lambda lp, A, m: rf.ppo_clip_loss(lp, lp.detach(), A, m, 0.2, 0.28,  # noqa: E731
                                             agg="seq-mean-token-sum")
    assert_close(pol.expected_gradient(_per_row(loss, tup, scores), tup), -grad_J, EXACT,
          "E[grad PPO loss] at theta_old vs -grad J")


@against("ppo_min_max_swapped", "ppo_clip_high_ignored", "ppo_ratio_inverted")
def test_exact_ppo_gradient_away_from_the_old_policy(rf):
    """Responses drawn from pi_old, theta moved away so that ratios leave [1 - 0.2, 1 + 0.28] on
    both sides: the exact expected gradient equals that of the clipped surrogate written out
    per token (PPO Eq. 7 with DAPO's clip-higher)."""
    pol, scores = _setup()
    old = TabularPolicy(pol.theta.detach() + 0.6 * torch.randn(
        pol.theta.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64),
        n_tokens=2, max_len=3)
    tup = pol.tuples(1)
    old_lp = old.token_logp().detach()[tup.prompt, tup.completion]          # (K, 1, L)
    R = scores[tup.prompt, tup.completion]

    def adapter_loss(batch):
        return torch.stack([rf.ppo_clip_loss(batch["logp"][k], old_lp[k], R[k], batch["mask"][k],
                                             0.2, 0.28, agg="seq-mean-token-sum")
                            for k in range(len(tup))])

    def written_out(batch):
        r = torch.exp(batch["logp"] - old_lp)
        A = R.unsqueeze(-1)
        per_token = torch.maximum(-A * r, -A * r.clamp(0.8, 1.28))
        return torch.where(batch["mask"], per_token, torch.zeros_like(r)).sum(-1).mean(-1)

    ratios = torch.exp(pol.token_logp().detach() - old.token_logp().detach())[:, pol.mask]
    assert bool((ratios > 1.28).any()) and bool((ratios < 0.8).any()), "clip range not exercised"
    assert_close(pol.expected_gradient(adapter_loss, tup, sampler=old),
          pol.expected_gradient(written_out, tup, sampler=old), EXACT,
          "E_old[grad PPO loss] vs the clipped surrogate written out")
