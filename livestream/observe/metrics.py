"""Prometheus metrics for the presence-driven managers.

Workers and web servers are separate processes (often on separate hosts), so
nothing is kept in process memory: the gauges are read from the shared state in
Redis (livestream/observe/state.py) at scrape time, and the two series only a worker can
observe are accumulated in Redis by the workers:

  ``<prefix>:metrics:join_to_running``  HASH bucket index -> observations, "sum": from the
      worker taking up a user's join to every component of the new manager running
  ``<prefix>:metrics:restarts``         HASH component name -> restarts, ever

Any process can then render the same numbers (views.metrics, gated by
LIVESTREAM["METRICS_ENABLED"]).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from livestream import keys
from livestream.observe.state import Snapshot, read_state
from livestream.redis import get_redis, text_map

# Seconds. A join handled promptly starts a manager in milliseconds; the upper
# buckets catch a worker with a backlog of presence messages.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _latency_key() -> str:
    return keys.metrics("join_to_running")


def _restarts_key() -> str:
    return keys.metrics("restarts")


# -- worker side ---------------------------------------------------------------


def _bucket(seconds: float) -> int:
    return next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))


async def record_join_to_running(seconds: float, client: aioredis.Redis | None = None) -> None:
    async with (client or get_redis()).pipeline(transaction=True) as pipe:
        pipe.hincrby(_latency_key(), str(_bucket(seconds)), 1)
        pipe.hincrbyfloat(_latency_key(), "sum", seconds)
        await pipe.execute()


class WorkerSeries:
    """The two series only a worker observes, kept in memory and written once per reconcile
    tick in one round trip: join-to-running observations (a flood of joins must not cost a
    round trip and a task per manager) and component restarts, counted as they happen (each
    supervisor's ``on_restart``; no pass over every manager's status to find them)."""

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self._sum = 0.0
        self._restarts: Counter[str] = Counter()

    def observe_join(self, seconds: float) -> None:
        self._buckets[_bucket(seconds)] += 1
        self._sum += seconds

    def count_restart(self, component: str) -> None:
        self._restarts[component] += 1

    async def flush(self) -> None:
        if not self._buckets and not self._restarts:
            return
        buckets, total, restarts = self._buckets, self._sum, self._restarts
        self._buckets, self._sum, self._restarts = Counter(), 0.0, Counter()
        try:
            async with get_redis().pipeline(transaction=True) as pipe:
                for bucket, n in buckets.items():
                    pipe.hincrby(_latency_key(), str(bucket), n)
                if buckets:
                    pipe.hincrbyfloat(_latency_key(), "sum", total)
                for name, n in restarts.items():
                    pipe.hincrby(_restarts_key(), name, n)
                await pipe.execute()
        except Exception:  # kept for the next tick
            self._buckets.update(buckets)
            self._sum += total
            self._restarts.update(restarts)
            raise


# -- scrape side ---------------------------------------------------------------


class LivestreamCollector(Collector):
    """One scrape's metrics, from a state snapshot and the workers' accumulated series."""

    def __init__(self, snapshot: Snapshot, latency: dict[str, str], restarts: dict[str, str]) -> None:
        self.snapshot = snapshot
        self.latency = latency
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        totals = self.snapshot.totals
        for name, doc in (
            ("present_users", "Users with at least one open dashboard connection."),
            ("open_sessions", "Open dashboard connections (presence entries)."),
            ("running_managers", "UserStreamManagers running on live workers."),
            ("pending_cleanups", "Scheduled manager cleanups not yet due."),
            ("live_workers", "Presence-manager workers seen within the lease TTL."),
            ("held_by_staff", "Present users whose manager a staff member stopped."),
        ):
            yield GaugeMetricFamily(f"streampai_{name}", doc, value=totals[name])

        states = GaugeMetricFamily(
            "streampai_components",
            "Components of running managers, by component and state.",
            labels=["component", "state"],
        )
        by_state = Counter(
            (name, c.state) for m in self.snapshot.managers.values() for name, c in m.components.items()
        )
        for (name, state), n in sorted(by_state.items()):
            states.add_metric([name, state], n)
        yield states

        restarts = CounterMetricFamily(
            "streampai_component_restarts",
            "Component restarts by their supervisor, since metrics began.",
            labels=["component"],
        )
        for name, times in sorted(self.restarts.items()):
            restarts.add_metric([name], int(times))
        yield restarts

        counts = [int(self.latency.get(str(i), 0)) for i in range(len(BUCKETS) + 1)]
        cumulative, running = [], 0
        for bound, n in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily(
            "streampai_join_to_running_seconds",
            "From a worker taking up a user's join to all of the new manager's components running.",
            buckets=cumulative,
            sum_value=float(self.latency.get("sum", 0.0)),
        )


async def read_metrics(client: aioredis.Redis | None = None) -> LivestreamCollector:
    redis = client or get_redis()
    snapshot = await read_state(redis)
    latency = text_map(await redis.hgetall(_latency_key()))
    restarts = text_map(await redis.hgetall(_restarts_key()))
    return LivestreamCollector(snapshot, latency, restarts)


def render(collector: LivestreamCollector) -> bytes:
    """The Prometheus text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
