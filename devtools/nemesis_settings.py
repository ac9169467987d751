"""Settings of the nemesis' daphne and runworker processes (devtools/nemesis.py):
production's, plus its Ticker component in the component registry."""

from streampai.settings import *  # noqa: F403
from streampai.settings import LIVESTREAM

# LIVESTREAM holds the environment's strings; this entry is settings code (as tests/settings.py).
LIVESTREAM["EXTRA_COMPONENTS"] = {"Ticker": "devtools.nemesis.Ticker"}  # type: ignore[assignment]
