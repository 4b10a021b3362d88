"""conformance: certifies a trainer's estimators against the contract (docs/contract.md) and
``refimpl``.

The package itself holds only the one name every adapter may raise; the contract's vocabularies
are in ``conformance.contract``, the checks in ``conformance.checks``, certification in
``conformance.runner`` and the command in ``conformance.cli``.
"""


class Unsupported(Exception):
    """Raised by an adapter for an option it cannot honour in one call; the check is ``skip``
    with the exception's message as the reason (docs/contract.md, "Capabilities")."""


__all__ = ["Unsupported"]
