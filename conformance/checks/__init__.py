"""Every registered check, one module per concept, beside refimpl's module of the same name:
``returns``, ``group``, ``whitening``, ``kl``, ``aggregation``, ``policy_loss``, ``value_loss``,
``preferences``, ``logprobs``. Each holds everything the harness knows about its functions: their
table entries (``register_op``: the sample calls from which ``templates`` makes the generic
checks), their hand-written and exact checks, and the mutants (broken implementations, each
modelled on a real bug) that those checks must reject. ``templates`` holds what is the same for
every function. Importing this package registers every check; ``docs/checks.md`` lists them."""

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
    training,
    value_loss,
    whitening,
)
from conformance.registry import Check, select


def all_checks(pattern: str | None = None, thorough: bool = False,
               slow: bool = False) -> list[Check]:
    """Registered checks in a stable order; ``pattern`` is a glob over ids; ``thorough`` adds the
    Hypothesis tier, ``slow`` the training runs."""
    return select(pattern, thorough, slow)
