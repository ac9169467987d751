"""4. Worker capacity: one runworker process running N managers.

A real ``manage.py runworker presence-manager`` whose log (the ConsoleLogger's
lines included) goes to a file. N users join the way connects do: this
process tracks each one in the presence store and broadcasts the join diff,
at an even rate over a ramp (so the managers' ticks are spread over the
second, as users arriving over time spread them). Once all N run and a
warm-up has passed, a measurement window records:

* tick lateness: each ``Console log #n - <UTC µs>`` line against its ideal
  time, ``first tick + (n - 1) x CONSOLE_LOG_INTERVAL`` (the ConsoleLogger
  schedules itself from its first tick, so lateness never accumulates);
* the worker's CPU (% of one core), RSS, and RSS per manager over the idle
  worker;
* Redis commands per second and redis-server's CPU, to show what the worker
  asks of Redis.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import profiling
from benchmarks.common import (
    announce_join,
    cpu_percent,
    environment,
    fake_meta,
    new_stack,
    sample,
    summary,
    wait_until,
)
from devtools.logs import CONSOLE_LINE, utc_epoch
from devtools.redis import flushall, unix_url

INTERVAL = 1.0  # CONSOLE_LOG_INTERVAL (the default)
TARGET_P99 = 0.050  # tick lateness p99 at 10,000 managers with status pushes on


def lateness(path: Path, window: tuple[int, int]) -> tuple[list[float], dict[str, int]]:
    """Lateness (s) of every console line logged between two byte offsets of ``path``.

    Each line is measured against the latest ``#1`` of its user before it (a
    manager started again counts from 1 again). Also counts what else the
    worker said in the window: restarts, warnings, errors.
    """
    text = path.read_bytes()[: window[1]].decode(errors="replace")
    start = len(path.read_bytes()[: window[0]].decode(errors="replace"))
    first: dict[str, float] = {}
    late = []
    for match in CONSOLE_LINE.finditer(text):
        at = utc_epoch(match["ts"])
        if match["n"] == "1":
            first[match["uid"]] = at
        if match.start() >= start and match["uid"] in first:
            late.append(at - first[match["uid"]] - (int(match["n"]) - 1) * INTERVAL)
    inside = text[start:]
    events = {
        "restarted_in_window": inside.count("Console log #1 -"),
        "warnings_in_window": inside.count(" WARNING "),
        "errors_in_window": inside.count(" ERROR "),
        "fenced_in_window": inside.count("leases not renewed"),
    }
    return late, events


async def running_managers() -> int:
    """Managers the live workers published (their ``managers:<worker>`` HASHes; not the
    scratch HASH a publish in progress writes, which a key scan would count twice)."""
    from livestream import keys
    from livestream.redis import get_redis, texts

    client = get_redis()
    total = 0
    for worker_id in texts(await client.zrange(keys.workers(), 0, -1)):
        total += await client.hlen(keys.managers(worker_id))
    return total


async def join(count: int, ramp: float) -> None:
    """``count`` users join over ``ramp`` seconds, as PresenceConsumer.connect does."""
    from livestream.presence.store import PresenceStore

    store = PresenceStore()
    started = time.monotonic()
    for i in range(count):
        delay = started + ramp * i / count - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await announce_join(f"w{i}", {**fake_meta(f"w{i}"), "ref": f"ref{i}"}, store)


def redis_calls(server: Any) -> int:
    import redis

    client = redis.Redis.from_url(unix_url(server))
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


async def one_size(tmp: Path, template: Path, server: Any, n: int, quick: bool, **env: str) -> dict[str, Any]:
    stack = new_stack(tmp, template, server, LIVESTREAM_PRESENCE_TTL="86400", **env)
    spy = None
    try:
        worker = stack.start_worker(f"worker-{n}")
        await worker.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=60)
        await asyncio.sleep(1.0)
        idle = sample(worker.popen.pid)
        ramp = max(2.0, n / 1000)
        t0 = time.monotonic()
        await join(n, ramp)
        everyone = await wait_until(
            lambda: _at_least(n), timeout=90, what=f"{n} managers running", interval=0.5, required=False
        )
        # measured all the same if not: the table says how many ran
        all_running: float | None = time.monotonic() - t0 if everyone else None
        await asyncio.sleep(3.0 if quick else 5.0)  # warm-up
        window = 6.0 if quick else 15.0
        start_offset = worker.log.path.stat().st_size
        running_at_start = await running_managers()
        before, redis_before, calls_before = (
            sample(worker.popen.pid),
            sample(server.process.pid),
            redis_calls(server),
        )
        if profiling.enabled():
            spy = profiling.record(worker.popen.pid, window, f"worker-{n}")
        await asyncio.sleep(window)
        after, redis_after, calls_after = (
            sample(worker.popen.pid),
            sample(server.process.pid),
            redis_calls(server),
        )
        end_offset = worker.log.path.stat().st_size
        still = await running_managers()
        at_start = running_at_start
        if spy is not None:
            spy[0].wait(timeout=60)
    finally:
        stack.stop_all()
        flushall(server)
    if spy is not None:
        print(
            f"-- py-spy, worker with {n} managers ({spy[1]}):\n{profiling.summarise(spy[1])}", file=sys.stderr
        )
    late, events = lateness(worker.log.path, (start_offset, end_offset))
    return {
        "managers": n,
        "ramp_s": ramp,
        "all_running_after_s": all_running,
        "window_s": window,
        "ticks_in_window": len(late),
        "ticks_expected": int(n * window / INTERVAL),
        "lateness_s": summary(late),
        "late_over_100ms": sum(x > 0.1 for x in late),
        "cpu_percent": cpu_percent(before, after),
        "rss_mb": after.rss / 2**20,
        "idle_rss_mb": idle.rss / 2**20,
        "rss_kb_per_manager": (after.rss - idle.rss) / 1024 / n,
        "redis_cpu_percent": cpu_percent(redis_before, redis_after),
        "redis_commands_per_s": (calls_after - calls_before) / window,
        "managers_running_at_start": at_start,
        "managers_running_at_end": still,
        "log_mb": end_offset / 2**20,
        **events,
    }


async def _at_least(n: int) -> bool:
    return await running_managers() >= n


NO_PUSH = {"LIVESTREAM_STATUS_PUSH_INTERVAL": "0"}


def run(quick: bool) -> dict[str, Any]:
    big_n = 1000 if quick else 10_000
    variants = [(200 if quick else 1000, "defaults", {}), (big_n, "defaults", {})]
    variants.append((big_n, "periodic status pushes off (STATUS_PUSH_INTERVAL=0)", NO_PUSH))
    with environment("capacity", PRESENCE_TTL=86400) as (tmp, template, server):
        results = []
        for n, label, env in variants:
            result = asyncio.run(one_size(tmp, template, server, n, quick, **env))
            results.append({"settings": label, **result})
    rows = []
    for r in results:
        lat = r["lateness_s"]
        rows.append(
            [
                f"{r['managers']:,}",
                r["settings"],
                f"{lat['p50'] * 1000:.1f}",
                f"{lat['p99'] * 1000:.1f}",
                f"{lat['max'] * 1000:.0f}",
                f"{r['ticks_in_window']:,} / {r['ticks_expected']:,}",
                f"{r['managers_running_at_start']:,} -> {r['managers_running_at_end']:,}",
                f"{r['restarted_in_window']:,} / {r['fenced_in_window']}",
                f"{r['cpu_percent']:.0f}%",
                f"{r['rss_mb']:.0f} MB",
                f"{r['rss_kb_per_manager']:.1f} KB",
                f"{r['redis_commands_per_s']:,.0f} ({r['redis_cpu_percent']:.0f}%)",
            ]
        )
    big = results[1]
    p99 = big["lateness_s"]["p99"]
    stable = big["restarted_in_window"] == 0 and big["fenced_in_window"] == 0
    met = big["managers"] >= 10_000 and stable and p99 < TARGET_P99
    return {
        "title": "4. Worker capacity",
        "target": f"10,000 managers in one worker, status pushes on (defaults), tick lateness p99 < {TARGET_P99 * 1000:.0f} ms",
        "verdict": "met" if met else ("missed" if big["managers"] >= 10_000 else "not run at 10,000"),
        "headline": " / ".join(
            f"{r['managers']:,} ({'defaults' if r['settings'] == 'defaults' else 'no status pushes'}): "
            f"p99 {r['lateness_s']['p99'] * 1000:.0f} ms, CPU {r['cpu_percent']:.0f}%"
            + (f", {r['restarted_in_window']:,} restarts" if r["restarted_in_window"] else "")
            for r in results[1:]
        ),
        "tables": [
            {
                "title": "One runworker, ConsoleLogger lines to a file, users joined at 1,000/s, "
                f"measured over {results[0]['window_s']:.0f} s after a warm-up",
                "columns": [
                    "managers",
                    "settings",
                    "lateness p50 (ms)",
                    "p99 (ms)",
                    "max (ms)",
                    "ticks seen / expected",
                    "managers running (window start -> end)",
                    "restarts / fences in window",
                    "worker CPU",
                    "worker RSS",
                    "RSS per manager",
                    "Redis commands/s (redis-server CPU)",
                ],
                "rows": rows,
            }
        ],
        "notes": [
            "Lateness = the time in a 'Console log #n' line minus (the time in #1 + (n - 1) s); "
            "CPU in % of one core.",
            "'fences' = the worker's 'leases not renewed for ...; stopping N managers' (a reconcile tick "
            "that ended more than LEASE_TTL - RECONCILE_INTERVAL = 2 s after the previous lease renewal); "
            "each is followed by the managers being claimed and started again ('restarts').",
            "Redis commands/s counts the commands Lua scripts run inside Redis too.",
        ],
        "data": {"variants": results},
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
