"""The reference sheet's variance-reduction table, every row made exact.

For each baseline, the exact expected gradient of the REINFORCE surrogate
-(1/G) sum_i A_i log pi(y_i), over every G-tuple of one prompt's responses (or every batch of N
draws), is compared with grad J or with the ideal normalised gradient grad J / sigma. Where the
sheet says "biased", the size of the bias is computed and pinned by an independent oracle: the
*effective reward* a(c) = E[A_1 | y_1 = c], enumerated in numpy over the other G - 1 samples
(``conformance.sheet.variance.effective_reward``, which docs/sheet.md uses too), so
that E[grad] = -grad_theta sum_c pi_theta(c) a(c) with a held fixed.
"""

import numpy as np
import pytest
import torch

from refimpl.tabular import TabularPolicy, cosine, pg_surrogate
from conformance.sheet.variance import effective_reward, grpo_np, whiten_np
from tests.harness import against, assert_close

EXACT = 1e-10


@pytest.fixture(scope="module")
def setup():
    pol = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=2, seed=1)
    scores = torch.randn(pol.n_prompts, pol.n_completions,
                         generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grad_J = pol.grad_J(pol.scores_to_rewards(scores))
    return pol, scores, grad_J


def _advantages(tup, scores, fn):
    """Call a canonical group estimator once on every tuple, each tuple its own group id."""
    R = scores[tup.prompt, tup.completion]
    ids = torch.arange(len(tup)).repeat_interleave(tup.size)
    return fn(R.flatten(), ids).reshape(R.shape)


@against("constant_baseline_updated_with_sample")
def test_constant_baseline_fixed_before_sampling_is_unbiased(rf, setup):
    pol, scores, grad_J = setup
    tup = pol.tuples(2)
    R = scores[tup.prompt, tup.completion]
    for b in (-1.0, 0.5, 3.0):
        g = -pol.expected_gradient(pg_surrogate(rf.baseline_constant(R, b)), tup)
        assert_close(g, grad_J, EXACT, f"constant baseline b={b}")


@against("loo_includes_self", "loo_divides_by_group_size")
def test_leave_one_out_is_unbiased_for_every_group_size(rf, setup):
    pol, scores, grad_J = setup
    for G in range(2, 7):
        tup = pol.tuples(G)
        A = _advantages(tup, scores, rf.leave_one_out_advantages)
        assert_close(A, rf.baseline_leave_one_out(scores[tup.prompt, tup.completion]), 1e-12,
              f"refimpl.leave_one_out_advantages vs the tabular baseline (G={G})")
        assert_close(-pol.expected_gradient(pg_surrogate(A), tup), grad_J, EXACT,
              f"leave-one-out, G={G}: E[grad] vs grad J")


@against("group_none_excludes_self", "group_mean_not_subtracted")
def test_group_mean_including_self_scales_the_gradient_by_one_minus_one_over_G(rf, setup):
    pol, scores, grad_J = setup
    for G in range(2, 7):
        tup = pol.tuples(G)
        A = _advantages(tup, scores, lambda s, i: rf.group_normalized_advantages(s, i, "none"))
        assert_close(-pol.expected_gradient(pg_surrogate(A), tup), (1 - 1 / G) * grad_J, EXACT,
              f"group mean, G={G}: E[grad] vs (1 - 1/G) grad J")


@against("group_std_biased", "group_std_over_batch")
def test_group_std_normalisation_bias_is_exactly_the_effective_reward_oracles(rf, setup):
    """GRPO's (R - mean) / (std + eps) is biased against grad J / sigma: its exact expected
    gradient equals the numpy effective-reward oracle, and it is not parallel to the ideal."""
    pol, scores, grad_J = setup
    ideal = pol.ideal_normalized_gradient(scores, per_prompt=True)
    probs = pol.probs().detach().numpy()
    lines = []
    for G in (2, 3, 4, 6):
        tup = pol.tuples(G)
        A = _advantages(tup, scores, lambda s, i: rf.group_normalized_advantages(s, i, "group", 1e-6))
        g = -pol.expected_gradient(pg_surrogate(A), tup)
        a = torch.tensor(np.stack([effective_reward(probs[p], scores[p].numpy(), G, grpo_np)
                                   for p in range(pol.n_prompts)]))
        oracle = pol.grad((pol.prompt_weights * (pol.probs() * a).sum(1)).sum())
        assert_close(g, oracle, EXACT, f"group std normalisation, G={G}: E[grad] vs effective reward")
        ratio, cos = float(g.norm() / ideal.norm()), cosine(g, ideal)
        lines.append(f"G={G}: |E g| / |grad J/sigma| = {ratio:.6f}, cosine {cos:.6f}")
        assert cos < 1 - 1e-4, f"G={G}: expected a bias in direction, got cosine {cos}"
    print("\n".join(lines))


@against("whiten_biased_var")
def test_global_normalisation_gap_shrinks_as_the_batch_grows(rf, setup):
    """REINFORCE++'s whitening over a batch of N independent (prompt, response) draws: the gap
    |E g - grad J/sigma| / |grad J/sigma| (sigma under the prompt mixture) falls strictly for
    N = 2..5, and equals the numpy oracle's for N = 2..4."""
    pol, scores, grad_J = setup
    ideal = pol.ideal_normalized_gradient(scores, per_prompt=False)
    q = (pol.prompt_weights.unsqueeze(1) * pol.probs().detach()).flatten().numpy()
    gaps = []
    for N in range(2, 6):
        tup = pol.tuples(N, same_prompt=False)
        R = scores[tup.prompt, tup.completion]
        m = torch.ones(1, N, dtype=torch.bool)
        A = torch.stack([rf.batch_normalized_advantages(R[k:k + 1], m, 1e-8)[0]
                         for k in range(len(tup))])
        g = -pol.expected_gradient(pg_surrogate(A), tup)
        if N <= 4:
            a = torch.tensor(effective_reward(q, scores.flatten().numpy(), N, whiten_np))
            joint = pol.prompt_weights.unsqueeze(1) * pol.probs()
            oracle = pol.grad((joint.flatten() * a).sum())
            assert_close(g, oracle, EXACT, f"global normalisation, N={N}: E[grad] vs effective reward")
        gaps.append(float((g - ideal).norm() / ideal.norm()))
    print("relative gap to grad J / sigma, N = 2..5:", [round(x, 6) for x in gaps])
    assert all(b < a for a, b in zip(gaps, gaps[1:])), f"gap does not shrink: {gaps}"


# --- the value baseline: unbiased for any V(s), biased once a wrong V bootstraps -----------------

@pytest.fixture(scope="module")
def mdp():
    """Three-token responses with a reward on every transition; gamma = 1."""
    pol = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=3, seed=41)
    rewards = torch.randn(pol.theta.shape, generator=torch.Generator().manual_seed(42),
                          dtype=torch.float64)
    V_true, _, _ = pol.values(rewards, gamma=1.0)
    V_wrong = V_true + torch.randn(V_true.shape, generator=torch.Generator().manual_seed(43),
                                   dtype=torch.float64)
    return pol, rewards, V_true, V_wrong, pol.grad_J(rewards)


def _token_level(pol, x):
    return x.reshape(-1, pol.tree.max_len)


@against("value_baseline_reads_next_state")
def test_value_baseline_on_the_monte_carlo_return_is_unbiased_for_any_V(rf, mdp):
    pol, rewards, V_true, V_wrong, grad_J = mdp
    tup = pol.tuples(1)
    m = pol.mask.repeat(pol.n_prompts, 1)
    G_t = rf.discounted_returns(_token_level(pol, pol.token_rewards(rewards)), m, 1.0)
    for name, V in (("true V", V_true), ("wrong V", V_wrong), ("zero V", torch.zeros_like(V_true))):
        A = rf.baseline_value(G_t, _token_level(pol, pol.along(V)))
        A = A.reshape(pol.n_prompts * pol.n_completions, 1, -1)
        assert_close(-pol.expected_gradient(pg_surrogate(A), tup), grad_J, EXACT,
              f"G_t - V(s_t) with {name}: E[grad] vs grad J")


@against("gae_off_by_one_bootstrap", "gae_forward_accumulation")
def test_gae_is_unbiased_with_the_true_V_and_biased_when_a_wrong_V_bootstraps(rf, mdp):
    pol, rewards, V_true, V_wrong, grad_J = mdp
    tup = pol.tuples(1)
    m = pol.mask.repeat(pol.n_prompts, 1)
    r = _token_level(pol, pol.token_rewards(rewards))

    def expected(V, lam):
        A, _ = rf.gae(r, _token_level(pol, pol.along(V)), m, 1.0, lam)
        A = A.reshape(pol.n_prompts * pol.n_completions, 1, -1)
        return -pol.expected_gradient(pg_surrogate(A), tup)

    for lam in (0.0, 0.5, 0.95, 1.0):
        assert_close(expected(V_true, lam), grad_J, EXACT, f"GAE(lam={lam}) with the true V")
    assert_close(expected(V_wrong, 1.0), grad_J, EXACT, "GAE(lam=1) with a wrong V (= MC return - V)")
    for lam in (0.0, 0.5, 0.95):
        gap = float((expected(V_wrong, lam) - grad_J).norm() / grad_J.norm())
        assert gap > 1e-3, f"GAE(lam={lam}) with a wrong V should be biased; relative gap {gap}"
