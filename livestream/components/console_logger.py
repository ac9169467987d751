"""ConsoleLogger: the seed's component, a log line a second while the user's manager runs."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from livestream import logformats
from livestream.components.base import Component
from livestream.conf import get_settings

logger = logging.getLogger("livestream.console")


class ConsoleLogger(Component):
    """Logs once a second, counting from 1, to show the user's manager is alive."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.count = 0

    async def run(self) -> None:
        interval = get_settings().CONSOLE_LOG_INTERVAL
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            self.count += 1
            # A worker whose leases may have lapsed (frozen, cut off from Redis) writes no
            # more lines: another worker may be running this user by now (fencing.may_act).
            if self.may_act():
                now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%fZ")
                logger.info(logformats.CONSOLE_LOG, self.user_id, self.count, now)
            # Sleep to the next whole tick, so lateness never accumulates.
            await asyncio.sleep(max(0.0, started + self.count * interval - loop.time()))

    def status(self) -> dict[str, Any]:
        return {"count": self.count}
