"""Settings for the whole test suite."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Property tests check what happens, never how fast: on a loaded 2-core CI machine
# a per-example deadline or the too-slow health check only turns load into
# flakiness. Time is bounded by pytest-timeout instead.
settings.register_profile(
    "zstream",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("zstream")
