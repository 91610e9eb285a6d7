"""Repository-wide pytest settings.

Hypothesis profiles: ``dev`` (default) keeps the suite fast; ``ci`` (selected by ``CI=true``,
as CI runs) explores more.  Choose explicitly with ``--hypothesis-profile``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")
