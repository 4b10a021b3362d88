"""Every registered check, one module per concept (beside its refimpl module): ``returns``,
``group``, ``whitening``, ``kl``, ``aggregation``, ``policy_loss``, ``value_loss``,
``preferences``, ``logprobs``; the generic templates every canonical function gets from its table
entry in ``templates``. Importing this package registers every check."""

from __future__ import annotations

from conformance.checks import (  # noqa: F401
    aggregation,
    group,
    kl,
    logprobs,
    policy_loss,
    preferences,
    returns,
    templates,
    value_loss,
    whitening,
)
from conformance.registry import Check, select


def all_checks(pattern: str | None = None, thorough: bool = False) -> list[Check]:
    """Registered checks in a stable order; ``pattern`` is a glob over ids."""
    return select(pattern, thorough)
