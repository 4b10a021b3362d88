"""Monte-Carlo returns and generalized advantage estimation (GAE).

Sources
- Returns: Sutton & Barto, "Reinforcement Learning: An Introduction", 2nd ed. (2018), Sec. 3.3,
  Eq. 3.8: G_t = sum_k gamma^k r_{t+k+1} (here indexed so that r_t is the reward of token t).
- GAE: Schulman, Moritz, Levine, Jordan, Abbeel, "High-Dimensional Continuous Control Using
  Generalized Advantage Estimation", 2015, arXiv:1506.02438, Sec. 3: the TD residual
  delta_t, Eq. 16 (the exponentially weighted sum); Eqs. 17-18 give the lambda = 0 and lambda = 1
  cases.

Notation
| symbol      | argument  | shape  | meaning                                             |
|-------------|-----------|--------|-----------------------------------------------------|
| r_t         | rewards   | (B, T) | reward received for token t                         |
| V(s_t)      | values    | (B, T) | critic's value of the state before token t          |
| m_t         | mask      | (B, T) | 1 on real response tokens (a prefix of the row)     |
| gamma       | gamma     | float  | discount, in [0, 1]                                 |
| lambda      | lam       | float  | GAE trade-off, in [0, 1]                            |

Choices the contract leaves to us, and what we chose
- The episode ends at the last real token: V after it is 0 and nothing at a padded position is
  read (padding is replaced by 0 before any arithmetic, so NaN or 1e30 there cannot leak into
  values or gradients).
- ``gae`` returns raw advantages: no whitening (see ``whitening.py`` for that separate step).
- The reverse scan runs over T with the batch vectorised; ``discounted_returns_loop`` and
  ``gae_loop`` below are the same recurrences written as plain per-row Python loops over floats,
  kept so that tests can hold the vectorised code against them (the CleanRL way).
"""

from __future__ import annotations

import torch
from torch import Tensor

from refimpl import _checks

__all__ = ["discounted_returns", "gae", "discounted_returns_loop", "gae_loop"]


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go ``G_t = sum_{k=t}^{last} gamma^(k-t) r_k`` for every real token.

    Recurrence (scanned from the last real token backwards): ``G_t = r_t + gamma * G_{t+1}``, with
    ``G`` after the last real token equal to 0. Padded positions of the result are exactly 0.
    """
    _checks.float_tensor("rewards", rewards, ndim=2)
    m = _checks.bool_mask(mask, rewards.shape)
    gamma = _checks.unit_interval("gamma", gamma)

    r = torch.where(m, rewards, torch.zeros_like(rewards))
    T = r.shape[1]
    G_next = torch.zeros_like(r[:, 0])
    out = [None] * T
    for t in reversed(range(T)):
        G_t = r[:, t] + gamma * G_next                    # G_t = r_t + gamma G_{t+1}
        G_t = torch.where(m[:, t], G_t, torch.zeros_like(G_t))
        out[t] = G_t
        G_next = G_t
    return torch.stack(out, dim=1)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation; returns ``(advantages, returns)``, each ``(B, T)``.

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)             (GAE paper, Sec. 3)
    A_t     = sum_{l>=0} (gamma * lam)^l * delta_{t+l}     (GAE paper, Eq. 16)
            = delta_t + gamma * lam * A_{t+1}              (the recurrence computed here)
    returns = A_t + V(s_t)                                  (the critic's regression target)

    ``V(s_{t+1})`` is 0 after each row's last real token (the response ended: a terminal state),
    and ``A`` is 0 there too, so the sum stops at the last real token. lam = 0 gives the TD
    residual delta_t; lam = 1 gives the Monte-Carlo return minus V(s_t). Padded positions of both
    outputs are exactly 0. No whitening.
    """
    _checks.float_tensor("rewards", rewards, ndim=2)
    _checks.float_tensor("values", values)
    if values.shape != rewards.shape:
        raise ValueError(f"values has shape {tuple(values.shape)}, expected rewards' shape "
                         f"{tuple(rewards.shape)}")
    _checks.same_float_dtype(rewards=rewards, values=values)
    m = _checks.bool_mask(mask, rewards.shape)
    gamma = _checks.unit_interval("gamma", gamma)
    lam = _checks.unit_interval("lam", lam)

    zero = torch.zeros_like(rewards)
    r = torch.where(m, rewards, zero)
    V = torch.where(m, values, zero)
    T = r.shape[1]
    V_next = torch.zeros_like(r[:, 0])                     # V after the last real token: 0
    A_next = torch.zeros_like(r[:, 0])
    advantages = [None] * T
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * V_next - V[:, t]         # TD residual (Sec. 3)
        A_t = delta + gamma * lam * A_next                 # Eq. 16, as a recurrence
        A_t = torch.where(m[:, t], A_t, torch.zeros_like(A_t))
        advantages[t] = A_t
        A_next, V_next = A_t, V[:, t]                      # both 0 beyond the row's end
    A = torch.stack(advantages, dim=1)
    returns = torch.where(m, A + V, zero)
    return A, returns


# --- plain loops: the same recurrences, one row and one float at a time --------------------------

def _row_lengths(mask: Tensor) -> list[int]:
    m = _checks.bool_mask(mask, mask.shape)
    return [int(n) for n in m.sum(dim=1)]


def discounted_returns_loop(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``discounted_returns`` as a plain double loop over Python floats (a test oracle)."""
    out = torch.zeros_like(rewards)
    for b, n in enumerate(_row_lengths(mask)):
        G = 0.0
        for t in reversed(range(n)):
            G = float(rewards[b, t]) + gamma * G
            out[b, t] = G
    return out


def gae_loop(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
             lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """``gae`` as a plain double loop over Python floats (CleanRL's ``lastgaelam``; a test oracle)."""
    A = torch.zeros_like(rewards)
    R = torch.zeros_like(rewards)
    for b, n in enumerate(_row_lengths(mask)):
        lastgaelam = 0.0
        for t in reversed(range(n)):
            next_value = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * next_value - float(values[b, t])
            lastgaelam = delta + gamma * lam * lastgaelam
            A[b, t] = lastgaelam
            R[b, t] = lastgaelam + float(values[b, t])
    return A, R
