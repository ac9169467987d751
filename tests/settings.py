"""Settings of the test suite's daphne and runworker processes: production's, plus the
misbehaving test components (tests/components.py) in the component registry.

Only processes started with DJANGO_SETTINGS_MODULE=tests.settings (TEST_SETTINGS below)
know these names; streampai.settings never accepts them.
"""

from streampai.settings import *  # noqa: F403
from streampai.settings import LIVESTREAM

TEST_COMPONENTS = {
    name: f"tests.components.{name}"
    for name in ("Crasher", "SlowCrasher", "Stubborn", "Stuck", "Echo", "ExternalAppender")
}
LIVESTREAM["EXTRA_COMPONENTS"] = TEST_COMPONENTS
