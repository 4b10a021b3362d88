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
- Speed: ``discounted_returns`` and ``gae`` compute the reverse discounted sum
  ``y_t = sum_{k>=t} c^(k-t) x_k`` in blocks of ``BLOCK`` steps: inside a block it is one small
  triangular matrix product (``x_block @ M``, ``M[k, i] = c^(k-i)`` for ``k >= i``); across blocks
  the first entry of each block obeys the same recurrence with discount ``c^BLOCK``, computed the
  same way one level up, and is carried back into its block times ``c^(BLOCK-i)``. No Python loop
  over T, no allocation per step, and sums of at most ``BLOCK`` terms before each carry, which is
  closer to float64 than a T-step sequential scan. ``discounted_returns_scan`` and ``gae_scan``
  are the same recurrences written as the plain reverse scan over T (the readable reference,
  tested equal to float32 rounding), and ``discounted_returns_loop`` / ``gae_loop`` as per-row
  loops over Python floats (the CleanRL way); ``benchmarks/`` measures all of them against the
  frameworks.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from refimpl import _checks

__all__ = ["discounted_returns", "gae", "reverse_discounted_sum", "discounted_returns_scan",
           "gae_scan", "discounted_returns_loop", "gae_loop"]


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go ``G_t = sum_{k=t}^{last} gamma^(k-t) r_k`` for every real token.

    Recurrence (from the last real token backwards): ``G_t = r_t + gamma * G_{t+1}``, with ``G``
    after the last real token equal to 0; computed in blocks (``reverse_discounted_sum``).
    Padded positions of the result are exactly 0.
    """
    _checks.float_tensor("rewards", rewards, ndim=2)
    m = _checks.bool_mask(mask, rewards.shape)
    gamma = _checks.unit_interval("gamma", gamma)
    r = torch.where(m, rewards, 0.0)                   # padding is 0, so the sums stop at the end
    return reverse_discounted_sum(r, gamma)            # 0 after the last real token: exactly 0


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation; returns ``(advantages, returns)``, each ``(B, T)``.

    delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)             (GAE paper, Sec. 3)
    A_t     = sum_{l>=0} (gamma * lam)^l * delta_{t+l}     (GAE paper, Eq. 16)
    returns = A_t + V(s_t)                                  (the critic's regression target)

    ``V(s_{t+1})`` is 0 after each row's last real token (the response ended: a terminal state),
    and delta is 0 there, so the sum stops at the last real token. lam = 0 gives the TD residual
    delta_t; lam = 1 gives the Monte-Carlo return minus V(s_t). Padded positions of both outputs
    are exactly 0. No whitening. The sum is computed in blocks (``reverse_discounted_sum``);
    ``gae_scan`` is the recurrence ``A_t = delta_t + gamma lam A_{t+1}`` as a plain scan.
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

    V = torch.where(m, values, 0.0)
    delta = torch.where(m, rewards, 0.0)               # r_t; the next two lines make it delta_t
    delta[:, :-1].add_(V[:, 1:], alpha=gamma)          # + gamma V(s_{t+1}); 0 after the last token
    delta.sub_(V)                                      # - V(s_t): the TD residual (Sec. 3)
    A = reverse_discounted_sum(delta, gamma * lam)     # Eq. 16
    return A, V.add_(A)                                # A + V in V's buffer; both 0 at padding


#: steps per block of ``reverse_discounted_sum`` (measured in benchmarks/: 32 and 64 are close;
#: the flops per element grow with the block, the levels of carries shrink with it)
BLOCK = 64


@functools.lru_cache(maxsize=64)
def _discount_matrix(c: float, n: int, dtype: torch.dtype, device: str) -> tuple[Tensor, Tensor]:
    """``M`` (n, n) with ``M[k, i] = c^(k-i)`` for ``k >= i`` (else 0), and ``c^(n-i)`` (n,).

    Built in float64; powers below the dtype's smallest normal number are set to 0 (a subnormal
    would only add rounding noise, and subnormal arithmetic is slow on CPUs). Built as plain
    tensors whatever the caller's mode (a cached tensor made under ``torch.inference_mode`` could
    not be saved for a later backward), on the CPU first.
    """
    with torch.inference_mode(False), torch.no_grad():
        k = torch.arange(n, dtype=torch.float64, device="cpu")
        e = k.unsqueeze(1) - k.unsqueeze(0)                      # k - i
        base = torch.tensor(c, dtype=torch.float64, device="cpu")
        M = torch.where(e >= 0, base ** e.clamp(min=0), 0.0)
        carry = base ** (n - k)                                  # c^(n - i)
        tiny = torch.finfo(dtype).tiny
        M = torch.where(M.abs() < tiny, 0.0, M)
        carry = torch.where(carry.abs() < tiny, 0.0, carry)
        return M.to(dtype=dtype, device=device), carry.to(dtype=dtype, device=device)


def reverse_discounted_sum(x: Tensor, c: float) -> Tensor:
    """``y_t = sum_{k>=t} c^(k-t) x_k`` along dim 1 of a ``(B, T)`` tensor, in blocks of ``BLOCK``.

    y[block j, i] = (x[block j] @ M)[i] + c^(BLOCK-i) * y[start of block j+1]
    y[start of block j] = sum_{j'>=j} (c^BLOCK)^(j'-j) * (x[block j'] @ M)[0]  (the same sum, one
    level up, on T / BLOCK entries)
    Entries of ``x`` that are 0 from some t on give exactly 0 there, provided every entry is
    finite: a non-finite entry reaches the whole of its block through the block's zero
    coefficients (inf * 0), where the scan confines it to the steps before it.

    16-bit inputs are summed in float32 (their smallest normal number would cut the powers of c
    too early), and float32 on CUDA in float64 (a process-wide TF32 setting would otherwise turn
    the matrix products into 10-bit ones).
    """
    c = float(c)
    if x.dtype in (torch.float16, torch.bfloat16):
        return reverse_discounted_sum(x.float(), c).to(x.dtype)
    if x.dtype == torch.float32 and x.device.type == "cuda":
        return reverse_discounted_sum(x.double(), c).float()
    B, T = x.shape
    n = BLOCK
    if T <= n:
        M, _ = _discount_matrix(c, T, x.dtype, str(x.device))
        return x @ M
    nb = -(-T // n)
    M, carry = _discount_matrix(c, n, x.dtype, str(x.device))
    blocks = (x if T == nb * n else F.pad(x, (0, nb * n - T))).view(B, nb, n)
    local = blocks @ M                                            # sums inside each block
    heads = reverse_discounted_sum(local[:, :, 0], c ** n)       # y at the start of each block
    after = F.pad(heads[:, 1:], (0, 1))                           # y at the start of the next block
    y = local.addcmul_(after.unsqueeze(2), carry)                 # local + after * c^(n - i)
    y = y.view(B, nb * n)
    return y if T == nb * n else y[:, :T].contiguous()


# --- the plain reverse scan: the readable reference of the two functions above ---------------------

def discounted_returns_scan(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """``discounted_returns`` as the reverse scan over T, the batch vectorised (tested equal)."""
    m = _checks.bool_mask(mask, rewards.shape)
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


def gae_scan(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
             lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """``gae`` as the reverse scan over T, the batch vectorised (tested equal)."""
    m = _checks.bool_mask(mask, rewards.shape)
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
    return A, torch.where(m, A + V, zero)


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
