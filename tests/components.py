"""Misbehaving components for the supervision fault tests.

Configured into real worker processes through the environment, e.g.
``LIVESTREAM_COMPONENTS=tests.components.Crasher,livestream.components.console_logger.ConsoleLogger``.
Each logs as the real ones do: ``[UserStreamManager:<user>] <Component> ...``.
"""

from __future__ import annotations

import asyncio
import logging
import os

from livestream.components.base import Component

logger = logging.getLogger("livestream.test_components")


class Crasher(Component):
    """Crashes as soon as it runs: restarted with backoff, then marked failed."""

    async def run(self) -> None:
        logger.info("[UserStreamManager:%s] Crasher running; about to crash", self.user_id)
        raise RuntimeError(f"Crasher of user {self.user_id} crashed on purpose")


class SlowCrasher(Component):
    """Crashes every TEST_SLOW_CRASH_AFTER seconds (default 1.5): never 4 times in 5 s."""

    async def run(self) -> None:
        await asyncio.sleep(float(os.environ.get("TEST_SLOW_CRASH_AFTER", "1.5")))
        raise RuntimeError(f"SlowCrasher of user {self.user_id} crashed on purpose")


class Stubborn(Component):
    """Ignores cancellation: stopping it must give up after SHUTDOWN_TIMEOUT."""

    async def run(self) -> None:
        while True:
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                logger.info("[UserStreamManager:%s] Stubborn ignoring cancellation", self.user_id)
