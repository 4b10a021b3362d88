"""Returns and GAE: the recurrences, their lambda = 0 and lambda = 1 identities, and exact
expectations on the tabular policy (Schulman et al. 2015, arXiv:1506.02438, Eqs. 10, 16-18)."""

import torch
from hypothesis import example, given
from hypothesis import strategies as st

from refimpl.returns import discounted_returns_loop, gae_loop
from refimpl.tabular import TabularPolicy
from tests.harness import Padded, against, assert_close, padded_batches

TOL64 = 1e-12      # float64 recurrences over <= 6 steps: a few ulps
gammas = st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])
lams = st.sampled_from([0.0, 0.3, 0.95, 1.0])

# a must-run case: rows of lengths 3, 1, 2 in a width of 4 (padding after every row)
UNEQUAL = Padded([3, 1, 2], 4, seed=7, dtype=torch.float64)


@against("returns_forward_in_time")
@given(b=padded_batches(dtypes=(torch.float64,)), gamma=gammas)
@example(b=UNEQUAL, gamma=0.9)
def test_discounted_returns_match_plain_loop(rf, b, gamma):
    r = b.randn()
    assert_close(rf.discounted_returns(r, b.mask, gamma), discounted_returns_loop(r, b.mask, gamma),
          TOL64, "discounted_returns vs the plain loop")


@against("gae_forward_accumulation", "gae_bootstraps_past_last_token", "gae_gamma_lam_swapped")
@given(b=padded_batches(dtypes=(torch.float64,)), gamma=gammas, lam=lams)
@example(b=UNEQUAL, gamma=0.9, lam=0.5)
def test_gae_matches_plain_loop(rf, b, gamma, lam):
    r, v = b.randn(), b.randn()
    A, R = rf.gae(r, v, b.mask, gamma, lam)
    A_loop, R_loop = gae_loop(r, v, b.mask, gamma, lam)
    assert_close(A, A_loop, TOL64, "gae advantages vs the plain loop")
    assert_close(R, R_loop, TOL64, "gae returns vs the plain loop")


@against("gae_off_by_one_bootstrap", "gae_bootstraps_past_last_token")
@given(b=padded_batches(dtypes=(torch.float64,)), gamma=gammas)
@example(b=UNEQUAL, gamma=0.9)
def test_gae_lambda_zero_is_td_residual(rf, b, gamma):
    r, v = b.randn(), b.randn()
    A, _ = rf.gae(r, v, b.mask, gamma, lam=0.0)
    # delta_t = r_t + gamma V_{t+1} - V_t with V = 0 after the last real token (GAE Eq. 17)
    v_next = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)
    v_next = torch.where(torch.cat([b.mask[:, 1:], torch.zeros_like(b.mask[:, :1])], 1), v_next,
                         torch.zeros_like(v_next))
    delta = torch.where(b.mask, r + gamma * v_next - v, torch.zeros_like(r))
    assert_close(A, delta, TOL64, "gae(lam=0) vs the TD residual")


@against("gae_off_by_one_bootstrap", "gae_gamma_lam_swapped")
@given(b=padded_batches(dtypes=(torch.float64,)), gamma=gammas)
@example(b=UNEQUAL, gamma=0.9)
def test_gae_lambda_one_is_return_minus_value(rf, b, gamma):
    r, v = b.randn(), b.randn()
    A, _ = rf.gae(r, v, b.mask, gamma, lam=1.0)
    expected = torch.where(b.mask, discounted_returns_loop(r, b.mask, gamma) - v, torch.zeros_like(v))
    assert_close(A, expected, TOL64, "gae(lam=1) vs Monte-Carlo return minus V (GAE Eq. 18)")


@against("gae_returns_without_value")
@given(b=padded_batches(dtypes=(torch.float64,)), gamma=gammas, lam=lams)
@example(b=UNEQUAL, gamma=1.0, lam=0.95)
def test_gae_returns_are_advantages_plus_values(rf, b, gamma, lam):
    r, v = b.randn(), b.randn()
    A, R = rf.gae(r, v, b.mask, gamma, lam)
    assert_close(R, torch.where(b.mask, A + v, torch.zeros_like(v)), TOL64, "returns = A + V")


# --- exact, on the tabular policy: three-token responses, two prompts, gamma = 0.9 -------------

def _tabular(max_len=3):
    pol = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=max_len, seed=11)
    gen = torch.Generator().manual_seed(12)
    rewards = torch.randn(pol.theta.shape, generator=gen, dtype=torch.float64)   # every transition
    return pol, rewards


def _flat(pol, x):
    return x.reshape(-1, pol.tree.max_len)


@against("gae_off_by_one_bootstrap", "gae_forward_accumulation", "gae_gamma_lam_swapped")
def test_exact_gae_with_true_values_is_the_true_advantage(rf):
    """E[A_hat_t | s_t, a_t] = A^pi(s_t, a_t) for every lambda when V = V^pi (exact, 1e-10)."""
    pol, rewards = _tabular()
    gamma = 0.9
    V, Q, A_true = pol.values(rewards, gamma)
    m = pol.mask.repeat(pol.n_prompts, 1)
    for lam in (0.0, 0.5, 0.95, 1.0):
        A_hat, _ = rf.gae(_flat(pol, pol.token_rewards(rewards)), _flat(pol, pol.along(V)), m,
                          gamma, lam)
        e, reach = pol.conditional_on_transition(A_hat.reshape(pol.n_prompts, -1, pol.tree.max_len))
        reached = reach > 0
        assert_close(e[reached], A_true[reached], 1e-10, f"E[GAE(lam={lam}) | s, a] vs A^pi(s, a)")


@against("returns_forward_in_time")
def test_exact_expected_return_is_the_state_value(rf):
    """E[G_t | s_t] = V^pi(s_t) and E[G_t | s_t, a_t] = Q^pi(s_t, a_t) (exact, 1e-10)."""
    pol, rewards = _tabular()
    gamma = 0.9
    V, Q, _ = pol.values(rewards, gamma)
    m = pol.mask.repeat(pol.n_prompts, 1)
    G = rf.discounted_returns(_flat(pol, pol.token_rewards(rewards)), m, gamma)
    G = G.reshape(pol.n_prompts, -1, pol.tree.max_len)
    e_s, reach_s = pol.conditional_on_state(G)
    assert_close(e_s[reach_s > 0], V[reach_s > 0], 1e-10, "E[G_t | s_t] vs V^pi(s_t)")
    e_sa, reach_sa = pol.conditional_on_transition(G)
    assert_close(e_sa[reach_sa > 0], Q[reach_sa > 0], 1e-10, "E[G_t | s_t, a_t] vs Q^pi(s_t, a_t)")
