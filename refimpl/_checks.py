"""Argument validation shared by every reference function.

The contract (docs/contract.md, "Invalid arguments") makes invalid arguments a ``ValueError`` whose message names
the argument. These helpers do the checking once, so each estimator module reads like its
equation. Nothing here changes a value: a helper either returns its input (a mask is returned as
``bool``) or raises.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "float_tensor",
    "same_float_dtype",
    "bool_mask",
    "unit_interval",
    "one_of",
    "positive",
    "per_row",
]


def float_tensor(name: str, x: object, ndim: int | None = None) -> Tensor:
    """``x`` must be a float tensor (float16/bfloat16/float32/float64), of ``ndim`` dims if given."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    return x


def same_float_dtype(**tensors: Tensor | None) -> torch.dtype:
    """All given float tensors share one dtype (mixed float dtypes are a ValueError)."""
    given = {k: v for k, v in tensors.items() if v is not None}
    dtypes = {v.dtype for v in given.values()}
    if len(dtypes) > 1:
        listing = ", ".join(f"{k}={v.dtype}" for k, v in given.items())
        raise ValueError(f"mixed float dtypes: {listing}; pass tensors of one dtype")
    return next(iter(dtypes))


def bool_mask(mask: object, shape: torch.Size, name: str = "mask") -> Tensor:
    """Validate a ``(B, T)`` response mask and return it as ``bool``.

    Accepted: bool, or an integer/float tensor holding only 0 and 1. The real tokens of each row
    must be a prefix of the row, and every row must hold at least one real token.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.shape != shape:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    if mask.dim() != 2:
        raise ValueError(f"{name} must be (B, T), got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex():
            raise ValueError(f"{name} must be bool or hold only 0 and 1, got dtype {mask.dtype}")
        as_bool = mask != 0
        if not bool((mask == as_bool).all()):               # 0 and 1 only (NaN fails too)
            raise ValueError(f"{name} must hold only 0 and 1 (or be bool)")
        mask = as_bool
    if mask.shape[1] == 0:
        raise ValueError(f"{name} has a row with no real token; every row needs at least one")
    # Prefix: once a row turns false it stays false, i.e. no step along a row goes from 0 to 1
    # (the largest difference of consecutive entries, as int8, is at most 0). Given that, a row
    # holds a real token exactly when its first entry is one.
    if mask.shape[0] and mask.shape[1] > 1 and int(torch.diff(mask.view(torch.int8), dim=1).max()) > 0:
        raise ValueError(f"{name}: the real tokens of each row must be a prefix of the row "
                         "(right padding only)")
    if not bool(mask[:, 0].all()):
        raise ValueError(f"{name} has a row with no real token; every row needs at least one")
    return mask


def unit_interval(name: str, value: float) -> float:
    """``value`` is a real number in [0, 1] (gamma, lam)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return v


def positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``value`` is a real number > 0 (>= 0 with ``allow_zero``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if v != v or (v < 0 if allow_zero else v <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return v


def one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name}={value!r}; expected one of {', '.join(choices)}")
    return value


def per_row(name: str, x: Tensor, shape: torch.Size) -> Tensor:
    """Broadcast a ``(B,)`` or ``(B, T)`` tensor (advantages) to ``shape`` = ``(B, T)``."""
    if x.shape == shape:
        return x
    if x.dim() == 1 and x.shape[0] == shape[0]:
        return x.unsqueeze(1).expand(shape)
    raise ValueError(f"{name} must have shape ({shape[0]},) or {tuple(shape)}, "
                     f"got {tuple(x.shape)}")
