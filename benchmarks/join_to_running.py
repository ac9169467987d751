"""2. Join to running: WebSocket accept -> that user's manager running.

Real daphne, real runworker, N users (1, 100, 1,000) connecting at once, one
socket each. Both ends are timestamped on this machine's clock, with
microsecond resolution:

* accept: PresenceConsumer.connect tracks the connection right after
  ``accept()``; the track script stores ``Redis TIME + PRESENCE_TTL`` in the
  expiry ZSET, so ``score - PRESENCE_TTL`` is the server-side accept time
  (heartbeats are pushed out of the window so the score is not moved).
* running: the ConsoleLogger's first line, ``Console log #1 - <UTC µs>``,
  written by the manager's component on its first run.

The worker's ``UserStreamManager started`` log line (millisecond asctime) is
reported too, as is the client's view (gather start -> handshake done).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from benchmarks.common import (
    close_all,
    environment,
    new_stack,
    open_all,
    paired,
    summary,
    take_failures,
    wait_until,
)
from devtools.clients import amake_users
from devtools.logs import CONSOLE_LINE, event_times, utc_epoch
from devtools.redis import flushall
from livestream import logformats

PRESENCE_TTL = 600.0  # long, and no heartbeat inside the run: the expiry score stays the track time


def first_console_lines(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for match in CONSOLE_LINE.finditer(text):
        if match["n"] == "1":
            out.setdefault(match["uid"], utc_epoch(match["ts"]))
    return out


async def one_size(tmp: Any, template: Any, server: Any, users_count: int, offset: int) -> dict[str, Any]:
    from livestream.presence.store import PresenceStore

    stack = new_stack(
        tmp,
        template,
        server,
        LIVESTREAM_PRESENCE_TTL=str(PRESENCE_TTL),
        LIVESTREAM_HEARTBEAT_INTERVAL="300",
    )
    # new_stack copied a fresh database: the users must be made after it.
    users = await amake_users(users_count, start=offset)
    try:
        web = stack.start_daphne(f"daphne-{users_count}")
        worker = stack.start_worker(f"worker-{users_count}")
        await worker.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=60)
        await asyncio.sleep(1.5)  # past the worker's first reconcile tick
        t0 = time.time()
        sessions = [s for _, s in users]
        opened = await open_all(web.url, sessions, concurrency=users_count)
        refused_first = sum(o is None for o in opened)
        # The admission gate refuses what cannot start within HANDSHAKE_QUEUE_WAIT; a page
        # retries (presence.js backs off from 0.5 s), so refused users try again, as pages.
        for attempt in range(5):
            again = [i for i, o in enumerate(opened) if o is None]
            if not again:
                break
            await asyncio.sleep(0.5 * 2**attempt)
            retried = await open_all(web.url, [sessions[i] for i in again], concurrency=len(again))
            for i, o in zip(again, retried, strict=True):
                opened[i] = o
        t_opened = time.time()
        uids = {uid for uid, _ in users}
        running: dict[str, float] = {}

        def all_running() -> bool:
            running.update(first_console_lines(worker.log.text()))
            return uids <= running.keys()

        everyone = await wait_until(
            all_running, timeout=60, what=f"{users_count} managers running", interval=0.25, required=False
        )
        t_all = max(running.values(), default=float("nan")) if everyone else float("nan")
        store = PresenceStore()
        scores = await store.redis.zrange(store.expiry_key, 0, -1, withscores=True)
        accepted = {member.rsplit("|", 1)[0]: score - PRESENCE_TTL for member, score in scores}
        started = event_times(worker.log.text(), logformats.MANAGER_STARTED)
        sockets = [o[0] for o in opened if o is not None]
        await close_all(sockets)
    finally:
        stack.stop_all()
        flushall(server)
    client_done = {uid: o[1] for (uid, _), o in zip(users, opened, strict=True) if o is not None}
    to_running, not_measured = paired(running, accepted, uids)
    to_started, _ = paired(started, accepted, uids)
    return {
        "users": users_count,
        "failed_handshakes": sum(o is None for o in opened),
        "refused_first_attempt": refused_first,
        "handshake_errors": take_failures(),
        "accept_to_running_s": summary(to_running),
        "accept_to_started_log_s": summary(to_started),
        # users with no recorded accept (not tracked) or no 'Console log #1' within the wait
        "not_measured": len(not_measured),
        "never_accepted": len(uids - accepted.keys()),
        "never_running": len(uids - running.keys()),
        "client_handshake_s": summary([client_done[u] - t0 for u in client_done]),
        "handshakes_done_s": t_opened - t0,
        "all_running_s": t_all - t0,  # NaN: not all ran within the wait
    }


def run(quick: bool) -> dict[str, Any]:
    sizes = [1, 20, 100] if quick else [1, 100, 1000]
    with environment("join") as (tmp, template, server):
        results = []
        for i, n in enumerate(sizes):
            results.append(asyncio.run(one_size(tmp, template, server, n, offset=i * 100_000)))
    rows = []
    for r in results:
        a, s, c = r["accept_to_running_s"], r["accept_to_started_log_s"], r["client_handshake_s"]
        rows.append(
            [
                f"{r['users']:,}",
                f"{a['p50'] * 1000:.1f}",
                f"{a['p99'] * 1000:.1f}",
                f"{a['max'] * 1000:.1f}",
                f"{s['p50'] * 1000:.0f} / {s['p99'] * 1000:.0f}",
                f"{c['p50'] * 1000:.0f} / {c['p99'] * 1000:.0f}",
                f"{r['all_running_s']:.2f}",
                f"{r['refused_first_attempt']} / {r['failed_handshakes']}",
                f"{r['never_accepted']} / {r['never_running']}",
            ]
        )
    big = results[-1]["accept_to_running_s"]
    return {
        "title": "2. Join to running",
        "target": "(none set) WebSocket accept -> manager running, p50 / p99",
        "verdict": "measured",
        "headline": f"accept -> running p50 {results[0]['accept_to_running_s']['p50'] * 1000:.1f} ms for 1 user, "
        f"p50 {big['p50'] * 1000:.0f} ms / p99 {big['p99'] * 1000:.0f} ms with {results[-1]['users']:,} at once"
        + (f" ({results[-1]['not_measured']} not measured)" if results[-1]["not_measured"] else ""),
        "tables": [
            {
                "title": "Users connecting at once (one socket each; real daphne + runworker)",
                "columns": [
                    "users",
                    "accept -> running p50 (ms)",
                    "p99 (ms)",
                    "max (ms)",
                    "accept -> 'started' log line p50 / p99 (ms)",
                    "client: start -> handshake done p50 / p99 (ms)",
                    "all running after (s)",
                    "handshakes refused at first / after 5 retries (admission control)",
                    "not measured: no accept recorded / not running in 60 s",
                ],
                "rows": rows,
            }
        ],
        "notes": [
            *(
                f"{r['users']:,}: handshakes that failed, by error: {r['handshake_errors']}"
                for r in results
                if r["handshake_errors"]
            ),
            "accept = the track script's Redis TIME (expiry score - PRESENCE_TTL), taken right after accept(); "
            "running = the ConsoleLogger's first 'Console log #1 - <UTC µs>' line. Both on this machine's clock.",
            "The 'started' log line has millisecond resolution (logging's asctime).",
            "The clients run in the benchmark process on the same 2 cores as daphne, the worker and Redis.",
        ],
        "data": {"sizes": results},
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
