"""9. One user's socket burst: 2,000 sockets of one user opened, then closed within 3 s, ten times.

Real daphne + runworker over TCP (so daphne's own Redis connections can be
counted with psutil). One user, one session (one browser with many tabs).
Each iteration opens SOCKETS sockets (OPEN_CONCURRENCY handshakes in flight),
then closes them all at random moments within CLOSE_SPREAD seconds. After
each iteration:

* ghosts: the user's presence entries left (``PresenceStore().list()``) once
  the presence is empty or GHOST_WAIT s have passed;
* the manager: ``UserStreamManager stopped: <uid>`` after the last close,
  and how long after it (CLEANUP_TIMEOUT 5 s; target: within 5.10 s);
* daphne's Redis connections (TCP connections of its pid to Redis) and its
  RSS, against a bound over the baseline before the first iteration;
* daphne's "took too long to shut down and was killed" lines.

Then the same with ``?live=1`` (as the page opens it): every tab is in the
user's group and receives ``{"type": "sessions", ...}`` on each open and
close; the pushes the tabs received per second are reported (the iteration
is bounded: LIVE_LIMIT s to open).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from typing import Any

from benchmarks.common import (
    cpu_percent,
    environment,
    new_stack,
    redis_connections,
    refusal_kind,
    sample,
    wait_until,
)
from devtools.clients import amake_users
from devtools.logs import event_times, killed
from devtools.processes import start_worker_ready
from devtools.redis import flushall
from livestream import logformats

CLOSE_SPREAD = 3.0
OPEN_CONCURRENCY = 200
CLEANUP = (5.0, 5.10)
GHOST_WAIT = 10.0
CONN_BOUND = 20  # daphne's Redis connections after an iteration: at most baseline + this
RSS_BOUND_MB = 64  # daphne's RSS after an iteration: at most baseline + this
LIVE_LIMIT = 90.0
OPEN_LIMIT = 90.0  # a plain burst's opens are cut after this (reported)
PLAIN_BUDGET = 270.0  # s for the plain bursts; a slower machine runs fewer (reported), never overruns


async def iteration(
    web: Any, worker: Any, server: Any, uid: str, session: str, n: int, live: bool, seed: int
) -> dict[str, Any]:
    from devtools.clients import open_socket
    from livestream.presence.store import PresenceStore

    path = "/ws/presence/?live=1" if live else "/ws/presence/"
    w_mark, d_mark = worker.log.mark(), web.log.mark()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    sockets: list[Any] = []
    readers: list[asyncio.Task[None]] = []
    refused: Counter[str] = Counter()
    pushes: Counter[int] = Counter()  # second -> "sessions" messages received across the tabs
    received: Counter[str] = Counter()  # every message the tabs received, by type
    read_errors: Counter[str] = Counter()

    async def read(ws: Any) -> None:
        try:
            async for raw in ws:
                kind = json.loads(raw).get("type", "?")
                received[kind] += 1
                if kind == "sessions":
                    pushes[int(time.time())] += 1
        except Exception as exc:
            read_errors[type(exc).__name__] += 1

    async def one() -> None:
        async with gate:
            try:
                ws = await open_socket(web.url, session, path=path, open_timeout=60, close_timeout=10)
            except Exception as exc:
                refused[refusal_kind(exc)] += 1
                return
        sockets.append(ws)
        if live:
            readers.append(asyncio.create_task(read(ws)))

    me0, d0 = sample(os.getpid()), sample(web.popen.pid)
    t0 = time.time()
    opening = asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    try:
        await asyncio.wait_for(opening, timeout=LIVE_LIMIT if live else OPEN_LIMIT)
        open_limited = False
    except TimeoutError:
        open_limited = True
    t_open = time.time()
    rng = random.Random(seed)
    last_close = [0.0]

    async def close(ws: Any) -> None:
        await asyncio.sleep(rng.uniform(0, CLOSE_SPREAD))
        last_close[0] = max(last_close[0], time.time())
        await ws.close()

    await asyncio.gather(*(close(ws) for ws in sockets), return_exceptions=True)
    t_closed = time.time()
    store = PresenceStore()

    async def gone() -> bool:
        return uid not in await store.list()

    await wait_until(gone, timeout=GHOST_WAIT, what="presence empty", interval=0.1, required=False)
    ghosts = len((await store.list()).get(uid, {}).get("metas", []))

    def stopped() -> bool:
        return uid in event_times(worker.log.text()[w_mark:], logformats.MANAGER_STOPPED)

    await wait_until(stopped, timeout=CLEANUP[1] + 10, what="manager stopped", interval=0.1, required=False)
    stop_at = event_times(worker.log.text()[w_mark:], logformats.MANAGER_STOPPED).get(uid)
    for task in readers:
        task.cancel()
    await asyncio.sleep(1.0)  # let daphne settle before reading its connections and RSS
    me1, d1 = sample(os.getpid()), sample(web.popen.pid)
    push_seconds = sorted(pushes)
    return {
        "live": live,
        "sockets": n,
        "opened": len(sockets),
        "refused": dict(refused),
        "open_s": t_open - t0,
        "open_cut_at_limit": open_limited,
        "close_s": t_closed - t_open,
        "ghosts": ghosts,
        "stopped_after_last_close_s": stop_at - last_close[0] if stop_at is not None and sockets else None,
        "daphne_redis_connections": redis_connections(web.popen.pid, server.port),
        "daphne_rss_mb": d1.rss / 2**20,
        "killed_lines": killed(web.log.text()[d_mark:]),
        "daphne_cpu_percent": cpu_percent(d0, d1),
        "client_cpu_percent": cpu_percent(me0, me1),
        "received_by_type": dict(received),
        "read_errors": dict(read_errors),
        "sessions_pushes": sum(pushes.values()),
        "sessions_pushes_per_s": sum(pushes.values()) / max(1.0, t_closed - t0),
        "sessions_pushes_peak_per_s": max(pushes.values(), default=0),
        "push_span_s": (push_seconds[-1] - push_seconds[0] + 1) if push_seconds else 0,
    }


async def measure(
    tmp: Any, template: Any, server: Any, n: int, plain: int, live: int, budget: float = 1e9
) -> dict[str, Any]:
    """``plain`` bursts (fewer if they take more than ``budget`` s in all), then ``live`` with ?live=1."""
    from devtools.clients import open_socket

    stack = new_stack(tmp, template, server, url=server.url)
    (uid, session), *_ = await amake_users(1)
    try:
        web = stack.start_daphne()
        worker = await start_worker_ready(stack)
        await asyncio.sleep(1.5)
        # warm-up: one socket opened and closed, so the baseline has daphne's steady Redis connections
        warm = await open_socket(web.url, session, open_timeout=30)
        await warm.close()
        await wait_until(
            lambda: "UserStreamManager stopped" in worker.log.text(),
            timeout=15,
            what="warm-up stop",
            required=False,
        )
        await asyncio.sleep(1.0)
        base = {
            "daphne_redis_connections": redis_connections(web.popen.pid, server.port),
            "daphne_rss_mb": sample(web.popen.pid).rss / 2**20,
        }
        results = []
        began = time.monotonic()
        for i in range(plain + live):
            is_live = i >= plain
            if not is_live and time.monotonic() - began > budget:
                continue  # out of time: the table says how many ran
            results.append(await iteration(web, worker, server, uid, session, n, live=is_live, seed=i))
    finally:
        stack.stop_all()
        flushall(server)
    for r in results:
        r["within_bounds"] = (
            r["daphne_redis_connections"] <= base["daphne_redis_connections"] + CONN_BOUND
            and r["daphne_rss_mb"] <= base["daphne_rss_mb"] + RSS_BOUND_MB
        )
        d = r["stopped_after_last_close_s"]
        r["stop_in_window"] = d is not None and CLEANUP[0] <= d <= CLEANUP[1]
    return {"baseline": base, "iterations": results, "plain_asked": plain, "live_asked": live}


def run(quick: bool) -> dict[str, Any]:
    n, plain, live = (300, 3, 1) if quick else (2000, 10, 1)
    with environment("oneuser", tcp=True) as (tmp, template, server):
        r = asyncio.run(measure(tmp, template, server, n, plain, live, budget=PLAIN_BUDGET))
    base, its = r["baseline"], r["iterations"]
    rows = []
    for i, it in enumerate(its, 1):
        stop = it["stopped_after_last_close_s"]
        rows.append(
            [
                f"{i}{' (?live=1)' if it['live'] else ''}",
                f"{it['opened']:,} / {it['sockets']:,}"
                + (" (open cut at limit)" if it["open_cut_at_limit"] else ""),
                ", ".join(f"{k} {v}" for k, v in it["refused"].items()) or "0",
                f"{it['open_s']:.1f} / {it['close_s']:.1f}",
                str(it["ghosts"]),
                f"{stop:.3f}" if stop is not None else "not stopped",
                str(it["daphne_redis_connections"]),
                f"{it['daphne_rss_mb']:.0f}",
                "yes" if it["within_bounds"] else "NO",
                str(it["killed_lines"]),
                f"{it['sessions_pushes']:,} ({it['sessions_pushes_per_s']:,.0f}/s, peak {it['sessions_pushes_peak_per_s']:,}/s); "
                f"all received: {it['received_by_type']}"
                if it["live"]
                else "",
                f"{it['daphne_cpu_percent']:.0f}% / {it['client_cpu_percent']:.0f}%",
            ]
        )
    plain_its = [it for it in its if not it["live"]]
    met = all(
        it["ghosts"] == 0
        and it["stop_in_window"]
        and it["within_bounds"]
        and it["killed_lines"] == 0
        and not it["refused"]
        for it in its
    )
    return {
        "title": f"9. One user's {n:,}-socket burst",
        "target": "after each burst: no presence ghost, manager stopped within the cleanup timeout "
        f"({CLEANUP[0]:.2f}-{CLEANUP[1]:.2f} s after the last close), daphne's Redis connections and RSS back "
        "under the bound, no 'took too long to shut down'",
        "verdict": "met" if met else "missed",
        "headline": f"{len(plain_its)} bursts: ghosts {sum(it['ghosts'] for it in plain_its)}, "
        f"{sum(not it['stop_in_window'] for it in plain_its)} stops outside the window, daphne Redis connections "
        f"{base['daphne_redis_connections']} -> {plain_its[-1]['daphne_redis_connections'] if plain_its else 'n/a'}, "
        f"RSS {base['daphne_rss_mb']:.0f} -> {plain_its[-1]['daphne_rss_mb'] if plain_its else float('nan'):.0f} MB; "
        + "; ".join(
            f"?live=1: {it['sessions_pushes']:,} session pushes, {it['sessions_pushes_per_s']:,.0f}/s"
            for it in its
            if it["live"]
        ),
        "tables": [
            {
                "title": f"One user, one session: {n:,} sockets opened ({OPEN_CONCURRENCY} handshakes in flight), "
                f"then all closed within {CLOSE_SPREAD:g} s; baseline daphne: {base['daphne_redis_connections']} Redis "
                f"connections, {base['daphne_rss_mb']:.0f} MB RSS",
                "columns": [
                    "iteration",
                    "opened",
                    "refused",
                    "open / close (s)",
                    "ghosts",
                    "last close -> stopped (s)",
                    "daphne Redis connections",
                    "daphne RSS (MB)",
                    f"within bound (+{CONN_BOUND} conns, +{RSS_BOUND_MB} MB)",
                    "'took too long' lines",
                    "'sessions' pushes received",
                    "daphne / client CPU",
                ],
                "rows": rows,
            }
        ],
        "notes": [
            *(
                [
                    f"Only {len(plain_its)} of {r['plain_asked']} bursts ran within the {PLAIN_BUDGET:.0f} s budget."
                ]
                if len(plain_its) < r["plain_asked"]
                else []
            ),
            "Ghosts = the user's presence entries left once the presence emptied or "
            f"{GHOST_WAIT:g} s after the last close. Redis connections = ESTABLISHED TCP connections of daphne's pid "
            "to Redis (psutil), read 1 s after the iteration.",
            f"Opens are cut after {OPEN_LIMIT:g} s ({LIVE_LIMIT:g} s with ?live=1; the open column says so); pushes/s = 'sessions' messages "
            "received across all tabs over the iteration (open + close).",
            "CPU in % of one core over the iteration; client = the benchmark process.",
        ],
        "data": r,
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
