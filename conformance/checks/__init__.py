"""Every registered check: the generic ones made from ``conformance.ops`` and the hand-written
analytic, input and exact checks of each estimator."""

from conformance.checks import exact, generic, specific, thorough  # noqa: F401
