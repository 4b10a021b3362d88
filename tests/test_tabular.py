"""The exact oracle itself: the tabular policy's enumeration, probabilities and gradients."""

import torch

from refimpl.tabular import TabularPolicy, baseline_group_normalized, pg_surrogate
from tests.harness import against, assert_close


@against()
def test_every_response_is_enumerated_once_and_probabilities_sum_to_one(rf):
    for n_tokens, max_len in ((2, 2), (2, 3), (3, 2)):
        pol = TabularPolicy.random(n_prompts=2, n_tokens=n_tokens, max_len=max_len, seed=4)
        C = sum(n_tokens ** k for k in range(max_len)) + n_tokens ** max_len
        assert pol.n_completions == C == len(set(pol.tree.completions))
        assert_close(pol.probs().detach().sum(1), torch.ones(2), 1e-14, "sum_c pi(c | p)")
        assert set(pol.tree.lengths.tolist()) == set(range(1, max_len + 1))


@against()
def test_state_visitation_matches_response_lengths(rf):
    """P(reach a prefix of depth d) summed over depth-d prefixes = P(|y| > d)."""
    pol = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=3, seed=6)
    d = pol.state_visitation().detach()
    p = pol.probs().detach()
    for depth in range(pol.tree.max_len):
        at = pol.tree.depth == depth
        longer = (pol.tree.lengths > depth)
        assert_close(d[:, at].sum(1), p[:, longer].sum(1), 1e-14, f"visitation at depth {depth}")


@against()
def test_autograd_gradient_of_J_matches_central_differences(rf):
    """An independent check of the oracle's gradient path (step 1e-6: error ~ 1e-12 + h^2)."""
    pol = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=2, seed=8)
    scores = torch.randn(2, pol.n_completions, generator=torch.Generator().manual_seed(9),
                         dtype=torch.float64)
    rewards = pol.scores_to_rewards(scores)
    g = pol.grad_J(rewards)
    h = 1e-6
    fd = torch.zeros_like(g)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in g.shape]).tolist():
        theta = pol.theta.detach().clone()
        theta[tuple(idx)] += h
        up = TabularPolicy(theta, 2, 2).J(rewards)
        theta[tuple(idx)] -= 2 * h
        down = TabularPolicy(theta, 2, 2).J(rewards)
        fd[tuple(idx)] = (up - down) / (2 * h)
    assert_close(g, fd, 1e-8, "autograd grad J vs central differences")


@against()
def test_multiset_enumeration_equals_ordered_enumeration(rf):
    """Counting each multiset of G responses with its multinomial weight gives the same exact
    expectation as summing over all C^G ordered tuples (the estimators are permutation
    equivariant)."""
    pol = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=2, seed=10)
    scores = torch.randn(2, pol.n_completions, generator=torch.Generator().manual_seed(11),
                         dtype=torch.float64)
    for G in (2, 3):
        grads = []
        for ordered in (False, True):
            tup = pol.tuples(G, ordered=ordered)
            assert_close(pol.tuple_weights(tup).sum(), 1.0, 1e-13, f"total probability (ordered={ordered})")
            A = baseline_group_normalized(scores[tup.prompt, tup.completion])
            grads.append(pol.expected_gradient(pg_surrogate(A), tup))
        assert_close(grads[0], grads[1], 1e-13, f"multisets vs ordered tuples, G={G}")
