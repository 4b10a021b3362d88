"""Group-relative advantages: GRPO, Dr. GRPO, batch-std scaling, and RLOO's leave-one-out.

Several responses are sampled for one prompt (a group); each response's advantage is its score
compared with the others of its group, so no critic is needed.

Sources
- GRPO: Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language
  Models", 2024, arXiv:2402.03300, Sec. 4.1.2 (outcome supervision): A_i = (r_i - mean(r)) / std(r);
  the objective it enters is Eq. 3 (Sec. 4.1.1).
- Dr. GRPO: Liu et al., "Understanding R1-Zero-Like Training: A Critical Perspective", 2025,
  arXiv:2503.20783, Sec. 3.1-3.2: dividing by std(r) biases the update towards questions whose
  rewards vary little; Dr. GRPO drops the division (``scale="none"``).
- Batch std: TRL's ``GRPOConfig.scale_rewards="batch"`` (trl 1.x, ``GRPOTrainer``): the group
  mean is subtracted and the std of all scores in the batch divides.
- RLOO: Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
  from Human Feedback in LLMs", 2024, arXiv:2402.14740, Sec. 3.2 (after Kool, van Hoof, Welling,
  "Buy 4 REINFORCE Samples, Get a Baseline for Free!", ICLR 2019 DeepRLStructPred workshop).

Notation
| symbol  | argument   | shape | meaning                                               |
|---------|------------|-------|-------------------------------------------------------|
| s_i     | scores     | (B,)  | scalar reward of response i                           |
| g(i)    | group_ids  | (B,)  | integer id of i's prompt; any values, any order       |
| mean_g  |            |       | mean of the scores of group g (response i included)   |
| std_g   |            |       | unbiased sample std of group g (divisor n_g - 1)      |

Choices the contract leaves to us, and what we chose
- The reference sheet writes the GRPO advantage as (r_i - mu_G) / sigma_G without saying which
  std or where the guard goes: we use the unbiased std (divisor n - 1, ``torch.std``'s default,
  which is what TRL and verl compute) and add ``eps`` to the std, not to the variance.
- Group sums and means accumulate in float64 (float32 in, float32 out): a float32 sum of many
  scores, accumulated one by one, loses more precision near zero advantage than the result's own
  rounding.
- A group whose scores are all equal gets advantage exactly 0 for every scale (0 / (0 + eps)), so
  no rounding of the mean leaves a residue of order 1e-16 / eps: for float32 (and narrower)
  scores this follows from the float64 accumulation (n copies of a float32 value v sum exactly in
  float64 for n < 2^29, and that sum divided by n is exactly v); float64 scores are first shifted
  by one score of their own group, which makes a constant group's shifted scores exactly 0.
- Groups are found by value of ``group_ids`` (``torch.unique``), so ids need not be contiguous,
  sorted, or of equal group size; no Python loop over groups or samples.
- A group of one has no std and no leave-one-out baseline: a ValueError for every scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

from refimpl import _checks

__all__ = ["group_normalized_advantages", "leave_one_out_advantages"]

_SCALES = ("group", "batch", "none")


def _groups(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Validate and return ``(inverse, counts)``: the group index of each sample and group sizes."""
    _checks.float_tensor("scores", scores, ndim=1)
    if not isinstance(group_ids, torch.Tensor):
        raise ValueError(f"group_ids must be a torch.Tensor, got {type(group_ids).__name__}")
    if group_ids.dtype == torch.bool or group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if group_ids.shape != scores.shape:
        raise ValueError(f"group_ids has shape {tuple(group_ids.shape)}, expected scores' shape "
                         f"{tuple(scores.shape)}")
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if counts.numel() and int(counts.min()) < 2:           # no scores: nothing to group
        lonely = torch.unique(group_ids)[counts < 2].tolist()
        raise ValueError(f"group_ids: group(s) {lonely[:5]} hold a single response; a group "
                         "statistic needs at least two responses per group")
    return inverse, counts


def _group_sum(x: Tensor, inverse: Tensor, n_groups: int) -> Tensor:
    return x.new_zeros(n_groups).index_add_(0, inverse, x)


def _float64(scores: Tensor, inverse: Tensor, n_groups: int) -> Tensor:
    """The scores in float64, shifted so that a constant group's group mean is exact.

    float32 and narrower: the float64 copy as it is (see the module docstring). float64: each
    score minus one score of its own group (the shifted-data algorithm for the mean; which member
    is taken changes nothing but rounding).
    """
    if scores.dtype != torch.float64:
        return scores.to(torch.float64)
    member = scores.new_empty(n_groups).index_copy_(0, inverse, scores.detach())
    return scores - member.index_select(0, inverse)


def _safe_sqrt(var: Tensor) -> Tensor:
    """sqrt with a finite gradient at 0 (same value as ``torch.sqrt``)."""
    if not var.requires_grad:
        return torch.sqrt(var)
    positive = var > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, var, torch.ones_like(var))),
                       torch.zeros_like(var))


def group_normalized_advantages(scores: Tensor, group_ids: Tensor, scale: str = "group",
                                eps: float = 1e-6) -> Tensor:
    """GRPO's group-relative advantage, ``(B,)``.

    A_i = (s_i - mean_g(i)) / (std_g(i) + eps)     scale="group"  (GRPO, Sec. 4.1.2)
    A_i = (s_i - mean_g(i)) / (std_batch + eps)    scale="batch"  (std of all B scores)
    A_i =  s_i - mean_g(i)                         scale="none"   (Dr. GRPO, Sec. 3.1)

    std is the unbiased sample std (divisor n - 1). The mean includes response i itself, which
    scales the expected policy gradient by (1 - 1/n_g) (see ``refimpl.tabular``).
    """
    inverse, counts = _groups(scores, group_ids)
    _checks.one_of("scale", scale, _SCALES)
    eps = _checks.positive("eps", eps, allow_zero=True)

    x = _float64(scores, inverse, len(counts))
    n = counts.to(x.dtype)
    mean = _group_sum(x, inverse, len(counts)) / n
    centred = x - mean.index_select(0, inverse)                           # s_i - mean_g(i)
    if scale == "none":
        return centred.to(scores.dtype)
    if scale == "group":
        var = _group_sum(centred * centred, inverse, len(counts)) / (n - 1)   # unbiased, per group
        std = _safe_sqrt(var).index_select(0, inverse)
    else:
        std = _safe_sqrt(scores.to(x.dtype).var())                       # all B scores, unshifted
    return (centred / (std + eps)).to(scores.dtype)


def leave_one_out_advantages(scores: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO advantage, ``(B,)``: each score minus the mean of the *other* scores of its group.

    A_i = s_i - (1 / (n_g - 1)) * sum_{j in g, j != i} s_j        (Ahmadian et al., Sec. 3.2)
        = n_g / (n_g - 1) * (s_i - mean_g)

    The baseline does not depend on response i, so the policy gradient stays unbiased.
    """
    inverse, counts = _groups(scores, group_ids)
    x = _float64(scores, inverse, len(counts))
    n = counts.to(x.dtype)
    total = _group_sum(x, inverse, len(counts))
    others = total.index_select(0, inverse) - x                          # sum over j != i
    baseline = others / (n - 1).index_select(0, inverse)                # mean over j != i
    return (x - baseline).to(scores.dtype)
