"""8. Join flood: 12,000 users join at once, one worker.

No daphne: this process tracks each user and announces the join exactly as a
connect does (common.announce_join: the public PresenceStore + diffs API),
all at once (JOIN_CONCURRENCY calls in flight). One ``runworker`` with default
settings (PRESENCE_TTL raised so the socketless entries do not expire). For
WATCH seconds from the first join its log says:

* when every user had a running manager (``UserStreamManager started: <uid>``
  not followed by ``stopped``);
* how many users were started more than once, and how many stops there were;
* fence lines (``leases not renewed for <x>s; stopping <n> managers``).

Target: every user started exactly once, no fence, all running within 60 s.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

from benchmarks.common import (
    announce_join,
    cpu_percent,
    environment,
    fake_meta,
    new_stack,
    sample,
)
from devtools.logs import FENCE_LINE
from devtools.processes import start_worker_ready
from devtools.redis import flushall

ALL_RUNNING_WITHIN = 60.0
JOIN_CONCURRENCY = 500


async def flood(tmp: Any, template: Any, server: Any, n: int, watch: float) -> dict[str, Any]:
    from devtools.logs import RunTracker
    from livestream.presence.store import PresenceStore

    stack = new_stack(tmp, template, server, LIVESTREAM_PRESENCE_TTL="86400")
    uids = [f"f{i}" for i in range(n)]
    try:
        worker = await start_worker_ready(stack, f"worker-{n}")
        await asyncio.sleep(1.5)
        tracker = RunTracker([worker])
        store = PresenceStore()
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def one(uid: str) -> None:
            async with gate:
                await announce_join(uid, fake_meta(uid), store)

        me0, w0 = sample(os.getpid()), sample(worker.popen.pid)
        t0 = time.time()
        joins = await asyncio.gather(*(one(u) for u in uids), return_exceptions=True)
        joins_s = time.time() - t0
        me1 = sample(os.getpid())
        join_errors = Counter(type(e).__name__ for e in joins if isinstance(e, BaseException))
        all_running_at: float | None = None
        peak_running = 0
        wanted = set(uids)
        while time.time() - t0 < watch:
            await asyncio.sleep(1.0)
            runs = tracker.update()
            live = {r.user_id for r in runs if r.end is None}
            peak_running = max(peak_running, len(live & wanted))
            if all_running_at is None and wanted <= live:
                all_running_at = max(r.start for r in runs if r.end is None and r.user_id in wanted)
        w1 = sample(worker.popen.pid)
        runs = tracker.update()
        running_at_end = len({r.user_id for r in runs if r.end is None} & wanted)
        fence_lines = 0
        with worker.log.path.open(errors="replace") as log:
            for line in log:
                if "leases not renewed" in line and FENCE_LINE.search(line):
                    fence_lines += 1
    finally:
        stack.stop_all()
        flushall(server)
    starts = Counter(r.user_id for r in runs if r.user_id in wanted)
    return {
        "users": n,
        "watch_s": watch,
        "joins_s": joins_s,
        "join_errors": dict(join_errors),
        "all_running_s": all_running_at - t0 if all_running_at is not None else None,
        "running_at_end": running_at_end,
        "peak_running": peak_running,
        "never_started": n - len(starts),
        "started_more_than_once": sum(1 for c in starts.values() if c > 1),
        "starts": sum(starts.values()),
        "stops": sum(1 for r in runs if r.user_id in wanted and r.end is not None),
        "fences": fence_lines,
        "worker_cpu_percent": cpu_percent(w0, w1),
        "worker_rss_mb": w1.rss / 2**20,
        "client_cpu_join_percent": cpu_percent(me0, me1),
    }


def run(quick: bool) -> dict[str, Any]:
    n, watch = (2000, 30.0) if quick else (12_000, 75.0)
    with environment("flood", PRESENCE_TTL=86400) as (tmp, template, server):
        r = asyncio.run(flood(tmp, template, server, n, watch))
    all_s = r["all_running_s"]
    met = (
        r["started_more_than_once"] == 0
        and r["never_started"] == 0
        and r["fences"] == 0
        and all_s is not None
        and all_s <= ALL_RUNNING_WITHIN
    )
    all_txt = f"{all_s:.1f} s" if all_s is not None else f"not within {r['watch_s']:.0f} s"
    return {
        "title": f"8. Join flood ({n:,} users at once, one worker)",
        "target": f"every user started exactly once, no fence, all running within {ALL_RUNNING_WITHIN:.0f} s",
        "verdict": "met" if met else "missed",
        "headline": f"all running: {all_txt}; {r['started_more_than_once']:,} users started more than once "
        f"({r['starts']:,} starts), {r['stops']:,} stops, {r['fences']} fences",
        "tables": [
            {
                "title": f"{n:,} simulated joins (track + join diff, {JOIN_CONCURRENCY} in flight), one runworker, "
                f"watched {r['watch_s']:.0f} s from the first join",
                "columns": [
                    "users",
                    "joins sent in (s)",
                    "all running after",
                    "running at the end",
                    "never started",
                    "started more than once",
                    "starts / stops",
                    "fences",
                    "worker CPU / RSS",
                    "client CPU (joining)",
                ],
                "rows": [
                    [
                        f"{n:,}",
                        f"{r['joins_s']:.1f}",
                        all_txt,
                        f"{r['running_at_end']:,}",
                        f"{r['never_started']:,}",
                        f"{r['started_more_than_once']:,}",
                        f"{r['starts']:,} / {r['stops']:,}",
                        str(r["fences"]),
                        f"{r['worker_cpu_percent']:.0f}% / {r['worker_rss_mb']:.0f} MB",
                        f"{r['client_cpu_join_percent']:.0f}%",
                    ]
                ],
            }
        ],
        "notes": [
            *([f"Joins that raised, by error: {r['join_errors']}"] if r["join_errors"] else []),
            "From the worker's log: 'UserStreamManager started/stopped: <uid>' (devtools.logs.RunTracker) and the "
            "fence line. 'All running' = the log time of the start that completed the set, minus the first join.",
            "Worker CPU in % of one core over the watch; client CPU = the benchmark process while sending joins.",
        ],
        "data": r,
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
