"""Hypothesis profiles, chosen by the HYPOTHESIS_PROFILE environment variable.

- ``ci`` (default): Hypothesis' built-in ``ci`` profile (derandomized, no deadline, no database),
  with fewer examples so the whole default run stays within minutes on two cores.
- ``nightly``: many examples, randomized, for the thorough tier (``tox -e nightly``).
"""

import os

import torch
from hypothesis import HealthCheck, settings

# Two xdist workers on two cores: one torch thread each. With torch's default (one per core),
# each worker's idle OpenMP threads spin for a core the other worker needs, and thousands of
# tiny autograd calls (the bisections of test_preferences) ran 10-25x slower in the full run.
torch.set_num_threads(1)

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
