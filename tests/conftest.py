"""Hypothesis profiles, chosen by the HYPOTHESIS_PROFILE environment variable.

- ``ci`` (default): Hypothesis' built-in ``ci`` profile (derandomized, no deadline, no database),
  with fewer examples so the whole default run stays within minutes on two cores.
- ``nightly``: many examples, randomized, for the thorough tier (``tox -e nightly``).
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    parent=settings.get_profile("ci"),
    max_examples=100,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.register_profile(
    "nightly",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
