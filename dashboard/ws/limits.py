"""Token buckets for the dashboard socket's limits (per IP handshakes, per socket frames).

In-process and cheap: a bucket is two floats; nothing here touches Redis.
"""

from __future__ import annotations

import time


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up. rate <= 0: unlimited."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(1.0, float(burst))
        self.tokens = self.burst
        self.last = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def full(self, now: float) -> bool:
        return self.rate <= 0 or self.tokens + (now - self.last) * self.rate >= self.burst


class KeyedBuckets:
    """One TokenBucket per key (an IP address), forgetting keys whose bucket refilled."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self.buckets: dict[str, TokenBucket] = {}
        self._pruned = time.monotonic()

    def take(self, key: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        if now - self._pruned > 60 or len(self.buckets) > self.max_keys:
            self.buckets = {k: b for k, b in self.buckets.items() if not b.full(now)}
            self._pruned = now
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst)
        return bucket.take(now)


class Throttled:
    """At most one log line per ``every`` seconds per key; counts what it held back."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self.last: dict[str, float] = {}
        self.held: dict[str, int] = {}

    def due(self, key: str) -> int | None:
        """None: stay quiet. Else: log now; the int is how many were held back since the last line."""
        now = time.monotonic()
        if now - self.last.get(key, -1e9) >= self.every:
            if len(self.last) > 10_000:
                self.last = {k: t for k, t in self.last.items() if now - t < self.every}
            self.last[key] = now
            return self.held.pop(key, 0)
        self.held[key] = self.held.get(key, 0) + 1
        return None
