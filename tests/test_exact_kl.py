"""KL estimators, exactly: expectations and expected gradients over every response of the
tabular policy.

What a trainer optimises when it adds ``beta * sum_t k(l_t)`` to its loss is not the gradient of
KL(pi || pi_ref): differentiating the estimator drops the score-function term. Exactly, with
d(s) the probability of reaching prefix s (Tang & Munos 2025, arXiv:2506.09477; Liu et al.
2025, arXiv:2510.01555):
- k1 = l:                 E[grad k1] = E[grad log pi] = 0
- k2 = l^2 / 2:           E[grad k2] = sum_s d(s) grad KL(pi(.|s) || ref(.|s))   (states frozen)
- k3 = exp(-l) - 1 + l:   E[grad k3] = sum_s d(s) grad KL(ref(.|s) || pi(.|s))  (forward KL!)
and k1 used as a *reward* (REINFORCE on the KL, the score-function route) gives the true
grad KL(pi || pi_ref) of the response distribution.
"""

import torch

from refimpl.tabular import TabularPolicy, cosine
from tests.harness import against, assert_close

EXACT = 1e-10     # float64 sums over <= 15 responses


def _pair(max_len=3):
    pol = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=max_len, seed=21)
    ref = TabularPolicy.random(n_prompts=2, n_tokens=2, max_len=max_len, seed=22)
    return pol, ref


def _estimates(rf, pol, ref, kind, logp=None):
    L = pol.tree.max_len
    lp = pol.token_logp() if logp is None else logp
    lq = ref.token_logp().detach().expand_as(lp)
    mask = pol.mask.expand(lp.shape[:-1] + (L,)) if lp.dim() == 3 else pol.mask
    k = rf.kl_estimate(lp.reshape(-1, L), lq.reshape(-1, L), mask.reshape(-1, L), kind)
    return k.reshape(lp.shape)


@against("k1_ratio_inverted", "k2_missing_half", "k3_ratio_inverted")
def test_exact_expectations_of_k1_k2_k3(rf):
    pol, ref = _pair()
    p = pol.probs().detach()
    kl = pol.kl(ref).detach()
    lp, lq = pol.token_logp().detach(), ref.token_logp().detach()
    e = {kind: (p * _estimates(rf, pol, ref, kind, lp).sum(-1)).sum(1) for kind in ("k1", "k2", "k3")}
    assert_close(e["k1"], kl, EXACT, "E[sum_t k1] vs KL(pi || pi_ref)")
    assert_close(e["k3"], kl, EXACT, "E[sum_t k3] vs KL(pi || pi_ref)")
    k2_exact = (p * (0.5 * (lp - lq) ** 2).sum(-1)).sum(1)     # its own exact value, not KL
    assert_close(e["k2"], k2_exact, EXACT, "E[sum_t k2] vs its exact value")
    assert float((e["k2"] - kl).abs().max()) > 1e-3, "k2 should be biased for KL on this policy"


def _expected_loss_gradient(rf, pol, ref, kind):
    tup = pol.tuples(1)

    def surrogate(batch):
        L = pol.tree.max_len
        lq = ref.token_logp().detach()[batch["prompt"], batch["completion"]]
        k = rf.kl_estimate(batch["logp"].reshape(-1, L), lq.reshape(-1, L),
                           batch["mask"].reshape(-1, L), kind)
        return k.reshape(len(tup), -1).sum(-1)
    return pol.expected_gradient(surrogate, tup)


def _state_frozen_gradient(pol, ref, reverse):
    d = pol.state_visitation().detach()
    per_state = pol.state_kl(ref, reverse=reverse)
    return pol.grad((pol.prompt_weights.unsqueeze(1) * d * per_state).sum())


@against("k2_missing_half", "k3_ratio_inverted")       # k1 either way round: zero in expectation
def test_exact_expected_gradient_of_each_estimator_used_as_a_loss(rf):
    pol, ref = _pair()
    true_grad = pol.grad((pol.prompt_weights * pol.kl(ref)).sum())
    g1 = _expected_loss_gradient(rf, pol, ref, "k1")
    g2 = _expected_loss_gradient(rf, pol, ref, "k2")
    g3 = _expected_loss_gradient(rf, pol, ref, "k3")
    assert_close(g1, torch.zeros_like(g1), EXACT, "E[grad sum_t k1]: should be 0")
    assert_close(g2, _state_frozen_gradient(pol, ref, reverse=False), EXACT,
          "E[grad sum_t k2] vs sum_s d(s) grad KL(pi(.|s) || ref(.|s))")
    assert_close(g3, _state_frozen_gradient(pol, ref, reverse=True), EXACT,
          "E[grad sum_t k3] vs sum_s d(s) grad KL(ref(.|s) || pi(.|s))")
    # neither is the gradient of the sequence-level KL on this policy (numbers in the message)
    for name, g in (("k2", g2), ("k3", g3)):
        c = cosine(g, true_grad)
        assert c < 1 - 1e-6, f"{name}-as-loss gradient unexpectedly parallel to grad KL ({c})"


@against("k1_ratio_inverted")
def test_exact_k1_as_reward_gives_the_true_kl_gradient(rf):
    """E[stopgrad(sum_t k1) grad log pi(y)] + E[grad sum_t k1] = grad KL(pi || pi_ref)."""
    pol, ref = _pair()
    tup = pol.tuples(1)

    def surrogate(batch):
        L = pol.tree.max_len
        lq = ref.token_logp().detach()[batch["prompt"], batch["completion"]]
        k = rf.kl_estimate(batch["logp"].reshape(-1, L), lq.reshape(-1, L),
                           batch["mask"].reshape(-1, L), "k1").reshape(len(tup), -1).sum(-1)
        seq_logp = batch["logp"].reshape(len(tup), -1).sum(-1)
        return k.detach() * seq_logp + k
    g = pol.expected_gradient(surrogate, tup)
    true_grad = pol.grad((pol.prompt_weights * pol.kl(ref)).sum())
    assert_close(g, true_grad, EXACT, "score-function k1 gradient vs grad KL")


@against("kl_reward_sign_flipped", "score_at_padded_end")
def test_exact_expected_shaped_return_is_score_minus_beta_kl(rf):
    """E[sum_t r_t] = E[score] - beta KL(pi || pi_ref) for the k1-shaped reward."""
    pol, ref = _pair()
    L, P, C = pol.tree.max_len, pol.n_prompts, pol.n_completions
    scores = torch.randn(P, C, generator=torch.Generator().manual_seed(23), dtype=torch.float64)
    beta = 0.3
    lp, lq = pol.token_logp().detach(), ref.token_logp().detach()
    mask = pol.mask.repeat(P, 1)
    shaped = rf.kl_penalized_rewards(scores.reshape(-1), lp.reshape(-1, L), lq.reshape(-1, L),
                                     mask, beta, "k1")
    ret = torch.where(mask, shaped, torch.zeros_like(shaped)).sum(-1).reshape(P, C)
    p = pol.probs().detach()
    expected = (p * scores).sum(1) - beta * pol.kl(ref).detach()
    assert_close((p * ret).sum(1), expected, EXACT, "E[shaped return] vs E[score] - beta KL")
