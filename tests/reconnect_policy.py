"""presence.js's reconnect policy, written once for the tests that play many tabs.

Keep in step with dashboard/static/dashboard/presence.js:
  restart (1012, 1001, 4012) right after an open socket: wait uniform 0.1-2 s, or
  0.1-s s when the close reason says "spread=<s>" (2 <= s <= 30);
  anything else: base = min(max(2 * base, 0.5), 15) s, wait base * [0.75, 1.25];
  4001 reload, 4003 stop, 4029 wait 30-60 s. A socket that opened resets base to 0.
"""

from __future__ import annotations

import random
import re

RESTART_CODES = (1012, 1001, 4012)
MIN_DELAY, MAX_DELAY = 0.5, 15.0


class ReconnectPolicy:
    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.base = 0.0

    def opened(self) -> None:
        self.base = 0.0

    def next_wait(self, close_code: int | None, reason: str | None = None) -> float | None:
        """Seconds to wait before the next attempt; None: do not reconnect."""
        if close_code in (4001, 4003):
            return None
        if close_code == 4029:
            self.base = MAX_DELAY
            return 30 + self.rng.random() * 30
        if close_code in RESTART_CODES and self.base == 0:
            asked = re.search(r"spread=([0-9.]+)", reason or "")
            spread = min(max(float(asked.group(1)), 2.0), 30.0) if asked else 2.0
            self.base = 0.1 + self.rng.random() * (spread - 0.1)
            return self.base
        self.base = min(max(self.base * 2, MIN_DELAY), MAX_DELAY)
        return self.base * (0.75 + self.rng.random() / 2)
