"""An exactly enumerable tabular language model: every expectation computed, none sampled.

A tiny autoregressive policy over a vocabulary of ``n_tokens`` real tokens plus an end-of-sequence
token (EOS), with responses of at most ``max_len`` tokens, one logit table per prefix and per
prompt. Because the set of responses is small (``2**(max_len+1) - 1`` per prompt), every
expectation under the policy is a finite sum: the objective J(theta), its gradient by autograd,
the true V/Q/A of every prefix, KL(pi || pi_ref), and the exact expected gradient of any surrogate
loss built from an estimator over every G-tuple of responses. An "unbiased" claim then becomes an
equality checked to 1e-10 in float64.

Sources
- Objective and policy-gradient theorem: Sutton et al., "Policy Gradient Methods for
  Reinforcement Learning with Function Approximation", NeurIPS 1999, Thm. 1; Williams 1992.
- V, Q, A: Sutton & Barto, "Reinforcement Learning: An Introduction", 2nd ed., 2018, Sec. 3.5
  (Eqs. 3.12-3.13); A = Q - V as in the reference sheet's table of value functions.
- Baselines (the reference sheet's variance-reduction table), see ``BASELINES`` below.

The model
| term            | here                                                                      |
|-----------------|---------------------------------------------------------------------------|
| prompt p        | index 0..P-1, drawn with probability ``prompt_weights[p]`` (uniform)      |
| state s         | a prefix of real tokens of length 0..max_len-1 (not ended yet)            |
| action a        | a token 0..n_tokens-1, or EOS = n_tokens                                  |
| transition      | (s, a); it ends the response when a = EOS or len(s) + 1 = max_len         |
| pi(a | s, p)    | softmax of ``logits[p, s]`` (float64, requires grad)                      |
| reward r(s, a)  | a table ``(P, S, A)``; a sequence-level score sits on the final transition |
| completion c    | the token sequence (EOS included as a real token); C of them per prompt   |

Each completion ends with exactly one final transition and each final transition belongs to
exactly one completion, so any per-completion score table R[p, c] is a per-transition reward
table with zeros elsewhere (``scores_to_rewards``).

The variance-reduction table of the reference sheet, made exact (``BASELINES``)
| baseline             | estimator (rewards R_1..R_G of one prompt's G samples)  | bias, exactly      |
|----------------------|----------------------------------------------------------|-------------------|
| constant b           | R_i - b, b fixed before sampling                          | none              |
| value V(s)           | G_t - V(s_t), any V that depends on the state only         | none (see below)  |
| group mean           | R_i - mean(R_1..R_G), self included                       | scales grad by (1 - 1/G) |
| group normalisation  | (R_i - mean) / (std + eps), std over the group            | not a multiple of grad J/sigma |
| global normalisation | (R_i - mean) / sqrt(var + eps) over a batch of N prompts' samples | shrinks with N |
| leave-one-out        | R_i - mean_{j != i} R_j                                   | none, for every G >= 2 |

Where the sheet's wording is imprecise
- "Value baseline: biased if V is wrong": a state-value baseline subtracted from the Monte-Carlo
  return is unbiased for *any* V that depends on the state only, right or wrong, because
  E[grad log pi(a|s) V(s)] = V(s) grad sum_a pi(a|s) = 0. Bias enters only when V is used to
  *bootstrap* the target (TD / GAE with lambda < 1): then E[A_hat | s, a] = A^pi(s, a) holds for
  the true V^pi and fails for a wrong one. ``tests/test_exact_baselines.py`` shows both.
- "Group normalisation: biased for small groups": subtracting the group mean alone already
  biases (a factor 1 - 1/G, a pure rescaling, so the direction is right); dividing by the group
  std changes the direction too (the cosine with grad J/sigma is below 1), and that part is what
  shrinks as G grows.
- "Constant baseline: subtract mean reward": the mean must be fixed before the sample is drawn
  (a running mean of *earlier* batches); the mean of the current batch, self included, is the
  group-mean row of the table, which is biased.
- The normalised estimators are compared with the ideal normalised gradient grad J / sigma,
  sigma the reward's standard deviation under pi for the prompt (per prompt for group
  normalisation; under the prompt mixture for global normalisation).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "TabularPolicy", "Tuples", "BASELINES",
    "baseline_constant", "baseline_value", "baseline_group_mean", "baseline_group_normalized",
    "baseline_global_normalized", "baseline_leave_one_out",
    "pg_surrogate", "cosine",
]

DTYPE = torch.float64


# --- the prefix tree -----------------------------------------------------------------------------

class _Tree:
    """States, completions and their token-level indexing, for ``n_tokens`` + EOS and ``max_len``."""

    def __init__(self, n_tokens: int, max_len: int):
        if n_tokens < 1 or max_len < 1:
            raise ValueError("n_tokens and max_len must be >= 1")
        self.n_tokens, self.max_len = n_tokens, max_len
        self.eos = n_tokens
        self.n_actions = n_tokens + 1
        self.states = [s for d in range(max_len) for s in itertools.product(range(n_tokens), repeat=d)]
        index = {s: i for i, s in enumerate(self.states)}
        self.state_index = index
        S, A, L = len(self.states), self.n_actions, max_len
        # child[s, a]: state index after (s, a), or -1 when the transition ends the response
        child = torch.full((S, A), -1, dtype=torch.long)
        depth = torch.zeros(S, dtype=torch.long)
        for s, i in index.items():
            depth[i] = len(s)
            for a in range(n_tokens):
                if len(s) + 1 < max_len:
                    child[i, a] = index[s + (a,)]
        self.child, self.depth = child, depth
        # completions: every token sequence that ends with EOS or reaches max_len
        completions = []
        for d in range(max_len):
            for s in itertools.product(range(n_tokens), repeat=d):
                completions.append(s + (self.eos,))
        completions += list(itertools.product(range(n_tokens), repeat=max_len))
        completions.sort(key=lambda c: (len(c), c))
        self.completions = completions
        C = len(completions)
        self.tokens = torch.zeros(C, L, dtype=torch.long)
        self.mask = torch.zeros(C, L, dtype=torch.bool)
        self.state = torch.zeros(C, L, dtype=torch.long)    # state index before token t
        for c, seq in enumerate(completions):
            for t, a in enumerate(seq):
                self.tokens[c, t] = a
                self.mask[c, t] = True
                self.state[c, t] = index[tuple(seq[:t])]
        self.lengths = self.mask.sum(dim=1)


# --- tuples of samples ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Tuples:
    """Every tuple of ``N`` samples, with how many orderings each multiset stands for.

    ``prompt`` and ``completion`` are ``(K, N)``; ``count`` is ``(K,)``: the number of ordered
    tuples the row stands for (1 when ``ordered``; the multinomial coefficient otherwise).
    ``same_prompt``: the N samples answer one prompt (a GRPO group) rather than being N
    independent draws of (prompt, completion) (a batch).
    """
    prompt: Tensor
    completion: Tensor
    count: Tensor
    same_prompt: bool

    @property
    def size(self) -> int:
        return self.prompt.shape[1]

    def __len__(self) -> int:
        return self.prompt.shape[0]


def _multisets(n_outcomes: int, N: int, ordered: bool) -> tuple[Tensor, Tensor]:
    if ordered:
        rows = list(itertools.product(range(n_outcomes), repeat=N))
        return torch.tensor(rows, dtype=torch.long), torch.ones(len(rows), dtype=DTYPE)
    rows = list(itertools.combinations_with_replacement(range(n_outcomes), N))
    counts = []
    for row in rows:
        c = math.factorial(N)
        for _, run in itertools.groupby(row):
            c //= math.factorial(len(list(run)))
        counts.append(float(c))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, N), torch.tensor(counts, dtype=DTYPE)


# --- the policy ----------------------------------------------------------------------------------

class TabularPolicy:
    """A softmax policy with one logit vector per (prompt, prefix); everything enumerable.

    ``logits``: ``(P, S, A)`` float64; a leaf that requires grad (``theta``).
    """

    def __init__(self, logits: Tensor, n_tokens: int, max_len: int,
                 prompt_weights: Tensor | None = None):
        self.tree = _Tree(n_tokens, max_len)
        P, S, A = logits.shape
        if (S, A) != (len(self.tree.states), self.tree.n_actions):
            raise ValueError(f"logits must be (P, {len(self.tree.states)}, {self.tree.n_actions}) "
                             f"for n_tokens={n_tokens}, max_len={max_len}; got {tuple(logits.shape)}")
        self.theta = logits.detach().to(DTYPE).clone().requires_grad_(True)
        self.prompt_weights = (torch.full((P,), 1.0 / P, dtype=DTYPE) if prompt_weights is None
                               else prompt_weights.to(DTYPE))

    @classmethod
    def random(cls, n_prompts: int = 2, n_tokens: int = 2, max_len: int = 2, scale: float = 1.0,
               seed: int = 0) -> "TabularPolicy":
        tree = _Tree(n_tokens, max_len)
        g = torch.Generator().manual_seed(seed)
        logits = scale * torch.randn(n_prompts, len(tree.states), tree.n_actions, generator=g,
                                     dtype=DTYPE)
        return cls(logits, n_tokens, max_len)

    # sizes and structure
    @property
    def n_prompts(self) -> int:
        return self.theta.shape[0]

    @property
    def n_completions(self) -> int:
        return len(self.tree.completions)

    @property
    def mask(self) -> Tensor:
        """``(C, L)`` bool: real tokens of each completion (EOS included)."""
        return self.tree.mask

    # probabilities (all differentiable in theta)
    def log_pi(self) -> Tensor:
        """``(P, S, A)``: log pi(a | s, p)."""
        return torch.log_softmax(self.theta, dim=-1)

    def token_logp(self) -> Tensor:
        """``(P, C, L)``: log pi(y_t | y_<t, p) of each completion's tokens; 0 at padding."""
        lp = self.log_pi()[:, self.tree.state, self.tree.tokens]             # (P, C, L)
        return torch.where(self.tree.mask, lp, torch.zeros_like(lp))

    def seq_logp(self) -> Tensor:
        """``(P, C)``: log pi(c | p)."""
        return self.token_logp().sum(dim=-1)

    def probs(self) -> Tensor:
        """``(P, C)``: pi(c | p); each row sums to 1."""
        return self.seq_logp().exp()

    def state_visitation(self) -> Tensor:
        """``(P, S)``: probability that a response passes through state s (reaches prefix s)."""
        p = self.probs()
        S = len(self.tree.states)
        out = torch.zeros(self.n_prompts, S, dtype=DTYPE)
        for t in range(self.tree.max_len):
            real = self.tree.mask[:, t]
            out = out.index_add(1, self.tree.state[real, t], p[:, real])
        return out

    # rewards, objective, value functions
    def scores_to_rewards(self, scores: Tensor) -> Tensor:
        """A ``(P, C)`` score table as a ``(P, S, A)`` reward table on final transitions."""
        r = torch.zeros(self.n_prompts, len(self.tree.states), self.tree.n_actions, dtype=DTYPE)
        last = self.tree.lengths - 1
        C = torch.arange(self.n_completions)
        s, a = self.tree.state[C, last], self.tree.tokens[C, last]
        r[:, s, a] = scores.to(DTYPE)
        return r

    def token_rewards(self, rewards: Tensor) -> Tensor:
        """``(P, C, L)``: r(s_t, a_t) along each completion; 0 at padding."""
        r = rewards[:, self.tree.state, self.tree.tokens]
        return torch.where(self.tree.mask, r, torch.zeros_like(r))

    def returns(self, rewards: Tensor, gamma: float = 1.0) -> Tensor:
        """``(P, C)``: R(c) = sum_t gamma^t r_t."""
        disc = gamma ** torch.arange(self.tree.max_len, dtype=DTYPE)
        return (self.token_rewards(rewards) * disc).sum(dim=-1)

    def J(self, rewards: Tensor, gamma: float = 1.0) -> Tensor:
        """J(theta) = sum_p w_p sum_c pi(c | p) R(c), differentiable."""
        per_prompt = (self.probs() * self.returns(rewards, gamma)).sum(dim=1)
        return (self.prompt_weights * per_prompt).sum()

    def grad(self, scalar: Tensor) -> Tensor:
        """d scalar / d theta, ``(P, S, A)``; zero when ``scalar`` does not depend on theta (a
        surrogate built from detached outputs carries no gradient, and that is its expectation)."""
        if not scalar.requires_grad:
            return torch.zeros_like(self.theta)
        grad = torch.autograd.grad(scalar, self.theta, allow_unused=True)[0]
        return torch.zeros_like(self.theta) if grad is None else grad

    def grad_J(self, rewards: Tensor, gamma: float = 1.0) -> Tensor:
        return self.grad(self.J(rewards, gamma))

    def values(self, rewards: Tensor, gamma: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """True ``V (P, S)``, ``Q (P, S, A)`` and ``A = Q - V`` by backward induction (detached).

        Q(s, a) = r(s, a) + gamma * V(child(s, a))   (0 instead of V when (s, a) ends the response)
        V(s)    = sum_a pi(a | s) Q(s, a)
        """
        pi = self.log_pi().detach().exp()
        P, S, A = pi.shape
        V = torch.zeros(P, S, dtype=DTYPE)
        Q = torch.zeros(P, S, A, dtype=DTYPE)
        child = self.tree.child
        for d in reversed(range(self.tree.max_len)):
            at_d = (self.tree.depth == d).nonzero().flatten()
            for s in at_d.tolist():
                nxt = child[s]
                cont = torch.where(nxt >= 0, V[:, nxt.clamp(min=0)], torch.zeros(P, A, dtype=DTYPE))
                Q[:, s] = rewards[:, s] + gamma * cont
                V[:, s] = (pi[:, s] * Q[:, s]).sum(dim=-1)
        return V, Q, Q - V.unsqueeze(-1)

    def along(self, table: Tensor) -> Tensor:
        """Read a ``(P, S)`` state table or ``(P, S, A)`` transition table along each completion:
        ``(P, C, L)`` with 0 at padding (V(s_t), or Q(s_t, a_t))."""
        x = table[:, self.tree.state] if table.dim() == 2 else table[:, self.tree.state,
                                                                     self.tree.tokens]
        return torch.where(self.tree.mask, x, torch.zeros_like(x))

    def conditional_on_transition(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact ``E[x_t | s_t = s, a_t = a]`` for a per-token quantity ``x (P, C, L)``.

        Returns ``(expectation (P, S, A), reach probability (P, S, A))``; the expectation is 0
        where the transition is never reached.
        """
        p = self.probs().detach()
        P, S, A = self.n_prompts, len(self.tree.states), self.tree.n_actions
        idx = (self.tree.state * A + self.tree.tokens)[self.tree.mask]        # (n_real,)
        c_of = torch.arange(self.n_completions).unsqueeze(1).expand_as(self.tree.mask)[self.tree.mask]
        weighted = (p[:, c_of] * x[:, self.tree.mask])
        num = torch.zeros(P, S * A, dtype=DTYPE).index_add(1, idx, weighted)
        den = torch.zeros(P, S * A, dtype=DTYPE).index_add(1, idx, p[:, c_of])
        exp = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                          torch.zeros_like(num))
        return exp.reshape(P, S, A), den.reshape(P, S, A)

    def conditional_on_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Exact ``E[x_t | s_t = s]``: ``(expectation (P, S), reach probability (P, S))``."""
        e, reach = self.conditional_on_transition(x)
        den = reach.sum(dim=-1)
        num = (e * reach).sum(dim=-1)
        return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                           torch.zeros_like(num)), den

    # KL
    def kl(self, ref: "TabularPolicy") -> Tensor:
        """KL(pi || pi_ref) of the response distributions, per prompt ``(P,)``, differentiable."""
        lp, lq = self.seq_logp(), ref.seq_logp().detach()
        return (lp.exp() * (lp - lq)).sum(dim=1)

    def state_kl(self, ref: "TabularPolicy", reverse: bool = False) -> Tensor:
        """``(P, S)``: KL(pi(.|s) || ref(.|s)) per state; ``reverse``: KL(ref(.|s) || pi(.|s))."""
        lp, lq = self.log_pi(), ref.log_pi().detach()
        if reverse:
            return (lq.exp() * (lq - lp)).sum(dim=-1)
        return (lp.exp() * (lp - lq)).sum(dim=-1)

    # tuples and exact expected gradients
    def tuples(self, N: int, same_prompt: bool = True, ordered: bool = False) -> Tuples:
        """Every G-tuple of one prompt's responses (``same_prompt``), or every batch of N
        independent (prompt, response) draws. Multisets with multinomial counts unless ``ordered``."""
        C, P = self.n_completions, self.n_prompts
        if same_prompt:
            rows, counts = _multisets(C, N, ordered)
            K = rows.shape[0]
            prompt = torch.arange(P).repeat_interleave(K).unsqueeze(1).expand(P * K, N)
            return Tuples(prompt.contiguous(), rows.repeat(P, 1), counts.repeat(P), True)
        rows, counts = _multisets(P * C, N, ordered)
        return Tuples(rows // C, rows % C, counts, False)

    def tuple_weights(self, tup: Tuples) -> Tensor:
        """``(K,)``: exact probability of each row of ``tup`` under this policy (detached)."""
        p = self.probs().detach()
        w = self.prompt_weights
        member = p[tup.prompt, tup.completion].prod(dim=1)
        if tup.same_prompt:
            return tup.count * w[tup.prompt[:, 0]] * member
        return tup.count * w[tup.prompt].prod(dim=1) * member

    def batch(self, tup: Tuples) -> dict[str, Tensor]:
        """The rows of ``tup`` as batches: ``logp (K, N, L)`` (differentiable in theta),
        ``mask (K, N, L)``, ``completion``/``prompt`` (K, N)."""
        lp = self.token_logp()[tup.prompt, tup.completion]
        return {"logp": lp, "mask": self.tree.mask[tup.completion], "prompt": tup.prompt,
                "completion": tup.completion}

    def expected_gradient(self, surrogate, tup: Tuples,
                          sampler: "TabularPolicy | None" = None) -> Tensor:
        """Exact ``E[grad_theta L]`` over every row of ``tup``, ``(P, S, A)``.

        ``surrogate(batch) -> (K,)`` gives the loss of each row from ``self.batch(tup)``; the
        sampling probabilities are held fixed (the estimator is differentiated, not the
        distribution), which is what a trainer's ``loss.backward()`` on a sampled batch does.
        Rows are drawn from ``sampler`` (default: this policy; PPO's behaviour policy otherwise).
        """
        losses = surrogate(self.batch(tup))
        if losses.shape != (len(tup),):
            raise ValueError(f"surrogate must return ({len(tup)},), got {tuple(losses.shape)}")
        weights = (sampler or self).tuple_weights(tup)
        return self.grad((weights * losses).sum())

    def ideal_normalized_gradient(self, scores: Tensor, per_prompt: bool = True) -> Tensor:
        """grad J / sigma: sigma the std of the score under pi, per prompt (``per_prompt``) or
        under the prompt mixture."""
        p = self.probs()
        s = scores.to(DTYPE)
        if per_prompt:
            mean = (p.detach() * s).sum(1, keepdim=True)
            sigma = ((p.detach() * (s - mean) ** 2).sum(1)).sqrt()
            return self.grad((self.prompt_weights * (p * s).sum(1) / sigma).sum())
        joint = self.prompt_weights.unsqueeze(1) * p.detach()
        mean = (joint * s).sum()
        sigma = (joint * (s - mean) ** 2).sum().sqrt()
        return self.grad_J(self.scores_to_rewards(scores)) / sigma


# --- the five baselines, vectorised over tuples (rewards R: (K, G)) ------------------------------

def baseline_constant(R: Tensor, b: float) -> Tensor:
    """R_i - b, with b fixed before sampling: unbiased."""
    return R - b


def baseline_value(returns: Tensor, values: Tensor) -> Tensor:
    """G_t - V(s_t) per token (``returns`` and ``values`` ``(..., L)``): unbiased for any V(s)."""
    return returns - values


def baseline_group_mean(R: Tensor) -> Tensor:
    """R_i - mean_j R_j, self included: the expected gradient is exactly (1 - 1/G) grad J."""
    return R - R.mean(dim=-1, keepdim=True)


def baseline_group_normalized(R: Tensor, eps: float = 1e-6) -> Tensor:
    """(R_i - mean) / (std + eps), unbiased std over the group (GRPO)."""
    return baseline_group_mean(R) / (R.std(dim=-1, keepdim=True) + eps)


def baseline_global_normalized(R: Tensor, eps: float = 1e-8) -> Tensor:
    """(R_i - mean) / sqrt(var + eps) over one batch (a row of R), unbiased var (REINFORCE++)."""
    return baseline_group_mean(R) * torch.rsqrt(R.var(dim=-1, keepdim=True) + eps)


def baseline_leave_one_out(R: Tensor) -> Tensor:
    """R_i - mean_{j != i} R_j (RLOO): unbiased for every G >= 2."""
    G = R.shape[-1]
    return R - (R.sum(dim=-1, keepdim=True) - R) / (G - 1)


BASELINES = {
    "constant": baseline_constant,
    "value": baseline_value,
    "group": baseline_group_normalized,
    "global": baseline_global_normalized,
    "leave-one-out": baseline_leave_one_out,
}


# --- helpers for surrogates ----------------------------------------------------------------------

def pg_surrogate(advantages: Tensor):
    """A surrogate for ``expected_gradient``: per row, -(1/N) sum_i A_i log pi(y_i), i.e. REINFORCE
    with ``agg="seq-mean-token-sum"``; ``advantages`` ``(K, N)`` (sequence) or ``(K, N, L)``."""
    def surrogate(batch: dict[str, Tensor]) -> Tensor:
        lp = batch["logp"]
        A = advantages.unsqueeze(-1) if advantages.dim() == 2 else advantages
        per_token = torch.where(batch["mask"], -A.detach() * lp, torch.zeros_like(lp))
        return per_token.sum(dim=-1).mean(dim=-1)
    return surrogate


def cosine(a: Tensor, b: Tensor) -> float:
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()))
