"""conformance: certifies a trainer's estimators against the contract (docs/contract.md) and ``refimpl``.

The harness (checks as data, ``rlconform certify``, reports, the pytest plugin) is built on
top of this package; for now it holds the one name every adapter may raise.
"""


class Unsupported(Exception):
    """Raised by an adapter for an option it cannot honour in one call; the check is ``skip``
    with the exception's message as the reason (docs/contract.md, "Adapters")."""


__all__ = ["Unsupported"]
