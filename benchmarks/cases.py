"""The inputs every implementation is timed on: one case per (function, size), in the contract's
canonical layout (docs/contract.md), float32, seeded.

Sizes are ``(B, T)`` from (64, 256) to (1024, 8192); response lengths are ragged, uniform in
[T/2, T] (the mask is a prefix of each row). ``token_logprobs`` uses a vocabulary of 256 and only
the sizes with B*T <= 2^20; the preference losses take N = B pairs; the group estimators take
B*T/256 scores (64 to 32768) in contiguous groups of ``GROUP_SIZE`` (the layout every framework that reshapes to
``(-1, G)`` expects, so none of them needs a reordering). Options are fixed per function
(``OPTIONS``) and are what each framework is configured to, so that every implementation computes
the same thing.

``GRAD_ARGS`` names the arguments a forward+backward measurement differentiates (the contract's
"Gradient checks differentiate with respect to ..."); functions absent from it are timed forward
only: advantage estimators run without gradient in every framework.
"""

from __future__ import annotations

import torch

__all__ = ["SIZES", "QUICK_SIZES", "FUNCTIONS", "OPTIONS", "GRAD_ARGS", "GROUP_SIZE", "VOCAB",
           "sizes_for", "elements", "make_inputs"]

SIZES = [(64, 256), (256, 1024), (1024, 1024), (1024, 8192)]
QUICK_SIZES = [(64, 256), (256, 1024)]
GROUP_SIZE = 8
#: the group estimators take B*T / GROUP_SCALE responses at size (B, T)
GROUP_SCALE = 256
VOCAB = 256
LOGITS_MAX_TOKENS = 2 ** 20

#: function -> the options every implementation is called with (beyond the tensors)
OPTIONS: dict[str, dict] = {
    "discounted_returns": {"gamma": 0.99},
    "gae": {"gamma": 0.99, "lam": 0.95},
    "kl_estimate": {"kind": "k3"},
    "kl_penalized_rewards": {"beta": 0.05, "kind": "k1"},
    "group_normalized_advantages": {"scale": "group", "eps": 1e-6},
    "leave_one_out_advantages": {},
    "batch_normalized_advantages": {"eps": 1e-8},
    "aggregate": {"mode": "token-mean"},
    "policy_gradient_loss": {"agg": "token-mean"},
    "ppo_clip_loss": {"clip_low": 0.2, "agg": "token-mean"},
    "value_loss": {"clip": 0.2, "agg": "token-mean"},
    "bradley_terry_loss": {},
    "dpo_loss": {"beta": 0.1},
    "ipo_loss": {"tau": 0.1},
    "token_logprobs": {},
    "sequence_logprob": {},
}
FUNCTIONS = list(OPTIONS)

#: function -> the tensor arguments differentiated in a forward+backward measurement
GRAD_ARGS: dict[str, tuple[str, ...]] = {
    "kl_estimate": ("logp",),
    "kl_penalized_rewards": ("logp",),
    "aggregate": ("values",),
    "policy_gradient_loss": ("logp",),
    "ppo_clip_loss": ("logp",),
    "value_loss": ("values",),
    "bradley_terry_loss": ("chosen_rewards", "rejected_rewards"),
    "dpo_loss": ("policy_chosen_logps", "policy_rejected_logps"),
    "ipo_loss": ("policy_chosen_logps", "policy_rejected_logps"),
    "token_logprobs": ("logits",),
    "sequence_logprob": ("token_logp",),
}

_PAIR_FUNCTIONS = ("bradley_terry_loss", "dpo_loss", "ipo_loss")
_GROUP_FUNCTIONS = ("group_normalized_advantages", "leave_one_out_advantages")


def sizes_for(function: str, sizes=SIZES) -> list[tuple[int, int]]:
    """The sizes ``function`` is timed at (``token_logprobs``: B*T <= 2^20 only; the group
    estimators: ``(B*T / 256, 1)``, B*T/256 responses, from 64 to 32768 over ``SIZES``, so that
    the plot shows how their time grows with the number of responses)."""
    if function == "token_logprobs":
        return [(B, T) for B, T in sizes if B * T <= LOGITS_MAX_TOKENS]
    if function in _GROUP_FUNCTIONS:
        return [(max(GROUP_SIZE, B * T // GROUP_SCALE), 1) for B, T in sizes]
    return list(sizes)


def elements(function: str, B: int, T: int) -> int:
    """The x axis of the plots: how many elements one call works on (B for per-sequence and per-pair
    functions, B*T otherwise)."""
    return B if function in _PAIR_FUNCTIONS + _GROUP_FUNCTIONS else B * T


def make_inputs(function: str, B: int, T: int, seed: int = 0, grad: bool = False,
                dtype: torch.dtype = torch.float32, device: str = "cpu") -> dict:
    """Keyword arguments for ``refimpl.<function>`` (tensors and ``OPTIONS``), seeded.

    With ``grad``, the tensors of ``GRAD_ARGS[function]`` are leaves that require a gradient.
    """
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, lo=-1.0, hi=1.0):
        return (lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)).to(dtype)

    lengths = torch.randint(T // 2, T + 1, (B,), generator=g).clamp(min=1)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    logp = rand(B, T, lo=-3.0, hi=-0.01)
    kw: dict = {}
    if function == "discounted_returns":
        kw = {"rewards": rand(B, T), "mask": mask}
    elif function == "gae":
        kw = {"rewards": rand(B, T), "values": rand(B, T), "mask": mask}
    elif function == "kl_estimate":
        kw = {"logp": logp, "ref_logp": logp + rand(B, T, lo=-0.3, hi=0.3), "mask": mask}
    elif function == "kl_penalized_rewards":
        kw = {"scores": rand(B), "logp": logp, "ref_logp": logp + rand(B, T, lo=-0.3, hi=0.3),
              "mask": mask}
    elif function in _GROUP_FUNCTIONS:
        if B % GROUP_SIZE:
            raise ValueError(f"B={B} is not a multiple of the group size {GROUP_SIZE}")
        kw = {"scores": rand(B), "group_ids": torch.arange(B) // GROUP_SIZE}
    elif function == "batch_normalized_advantages":
        kw = {"advantages": rand(B, T), "mask": mask}
    elif function == "aggregate":
        kw = {"values": rand(B, T), "mask": mask}
    elif function in ("policy_gradient_loss", "ppo_clip_loss"):
        # one advantage per row, laid out per token (the (B, T) layout every framework takes;
        # frameworks that take (B,) read column 0)
        A = rand(B).unsqueeze(1).expand(B, T).contiguous()
        kw = {"logp": logp, "advantages": A, "mask": mask}
        if function == "ppo_clip_loss":
            kw["old_logp"] = logp + rand(B, T, lo=-0.4, hi=0.4)     # ratios on both sides of the clip
    elif function == "value_loss":
        values = rand(B, T)
        kw = {"values": values, "old_values": values + rand(B, T, lo=-0.4, hi=0.4),
              "returns": rand(B, T), "mask": mask}
    elif function in _PAIR_FUNCTIONS:
        if function == "bradley_terry_loss":
            kw = {"chosen_rewards": rand(B), "rejected_rewards": rand(B)}
        else:
            kw = {name: rand(B, lo=-40.0, hi=-5.0) for name in
                  ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                   "ref_rejected_logps")}
    elif function == "token_logprobs":
        kw = {"logits": rand(B, T, VOCAB, lo=-4.0, hi=4.0),
              "tokens": torch.randint(0, VOCAB, (B, T), generator=g)}
    elif function == "sequence_logprob":
        kw = {"token_logp": logp, "mask": mask}
    else:
        raise ValueError(f"function: unknown {function!r}; expected one of {', '.join(FUNCTIONS)}")
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    if grad:
        for name in GRAD_ARGS.get(function, ()):
            kw[name] = kw[name].detach().clone().requires_grad_(True)
    kw.update(OPTIONS[function])
    return kw
