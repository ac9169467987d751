"""6. Join and close bursts: 500 users open the dashboard at the same moment, then close it.

Real daphne + runworker, default settings. Each user has one tab opened as the
page opens it (``/ws/presence/?live=1``); all handshakes start together.

* join: the client's ``time.time()`` when its handshake completed -> the
  ConsoleLogger's first line for that user, ``Console log #1 - <UTC µs>``.
  Target p99 <= 100 ms.
* close: the same 500 tabs close at random moments within one second;
  ``time.time()`` just before each close frame -> the worker's
  ``UserStreamManager stopped: <uid>`` (asctime, 1 ms). Target: all within
  5.00-5.10 s (CLEANUP_TIMEOUT 5 s).

Both ends are on this machine's clock. A user whose handshake failed or whose
line never came is counted in the table, not measured.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

from benchmarks.common import (
    cpu_percent,
    environment,
    ms,
    new_stack,
    open_all,
    paired,
    sample,
    summary,
    take_failures,
    wait_until,
)
from devtools.clients import amake_users
from devtools.logs import CONSOLE_LINE, event_times, utc_epoch
from devtools.processes import start_worker_ready
from devtools.redis import flushall
from livestream import logformats

JOIN_P99 = 0.100
CLOSE_WINDOW = (5.00, 5.10)
PAGE_PATH = "/ws/presence/?live=1"


def first_console(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for match in CONSOLE_LINE.finditer(text):
        if match["n"] == "1":
            out.setdefault(match["uid"], utc_epoch(match["ts"]))
    return out


async def measure(tmp: Any, template: Any, server: Any, n: int) -> dict[str, Any]:
    stack = new_stack(tmp, template, server)
    users = await amake_users(n)
    try:
        web = stack.start_daphne()
        worker = await start_worker_ready(stack)
        await asyncio.sleep(1.5)  # past the worker's first reconcile tick
        me0 = sample(os.getpid())
        t0 = time.time()
        opened = await open_all(web.url, [s for _, s in users], concurrency=n, path=PAGE_PATH)
        handshakes_s = time.time() - t0
        me1 = sample(os.getpid())
        handshake = {uid: o[1] for (uid, _), o in zip(users, opened, strict=True) if o is not None}
        running: dict[str, float] = {}

        def all_running() -> bool:
            running.update(first_console(worker.log.text()))
            return handshake.keys() <= running.keys()

        await wait_until(all_running, timeout=60, what="managers running", interval=0.2, required=False)
        await asyncio.sleep(2.0)
        mark = worker.log.mark()
        rng = random.Random(6)
        closed_at: dict[str, float] = {}

        async def close(uid: str, ws: Any) -> None:
            await asyncio.sleep(rng.uniform(0, 1.0))
            closed_at[uid] = time.time()
            await ws.close()

        me2 = sample(os.getpid())
        await asyncio.gather(
            *(close(uid, o[0]) for (uid, _), o in zip(users, opened, strict=True) if o is not None),
            return_exceptions=True,
        )
        me3 = sample(os.getpid())

        def all_stopped() -> bool:
            return (
                closed_at.keys() <= event_times(worker.log.text()[mark:], logformats.MANAGER_STOPPED).keys()
            )

        await wait_until(all_stopped, timeout=30, what="managers stopped", interval=0.2, required=False)
        text = worker.log.text()[mark:]
    finally:
        stack.stop_all()
        flushall(server)
    uids = [uid for uid, _ in users]
    join, not_running = paired(running, handshake, handshake.keys())
    stopped = event_times(text, logformats.MANAGER_STOPPED)
    scheduled = event_times(text, logformats.CLEANUP_SCHEDULED)
    delays, not_stopped = paired(stopped, closed_at, closed_at.keys())
    return {
        "users": n,
        "failed_handshakes": len(uids) - len(handshake),
        "handshake_errors": take_failures(),
        "handshakes_done_s": handshakes_s,
        "handshake_to_console1_s": summary(join),
        "join_not_running_in_60s": len(not_running),
        "join_over_target": sum(x > JOIN_P99 for x in join),
        "client_cpu_join_percent": cpu_percent(me0, me1),
        "close_to_stopped_s": summary(delays),
        "close_to_scheduled_s": summary(paired(scheduled, closed_at, closed_at.keys())[0]),
        "close_not_stopped_in_30s": len(not_stopped),
        "close_outside_window": sum(not CLOSE_WINDOW[0] <= d <= CLOSE_WINDOW[1] for d in delays)
        + len(not_stopped),
        "close_early": sum(d < CLOSE_WINDOW[0] for d in delays),
        "client_cpu_close_percent": cpu_percent(me2, me3),
    }


def run(quick: bool) -> dict[str, Any]:
    n = 100 if quick else 500
    with environment("burst") as (tmp, template, server):
        r = asyncio.run(measure(tmp, template, server, n))
    j, c = r["handshake_to_console1_s"], r["close_to_stopped_s"]
    join_met = (
        bool(j["n"])
        and j["p99"] <= JOIN_P99
        and not r["join_not_running_in_60s"]
        and not r["failed_handshakes"]
    )
    close_met = bool(c["n"]) and r["close_outside_window"] == 0
    return {
        "title": f"6. {n}-user join burst and close burst",
        "target": f"join: handshake -> 'Console log #1' p99 <= {JOIN_P99 * 1000:.0f} ms; close: every close -> "
        f"'UserStreamManager stopped' within {CLOSE_WINDOW[0]:.2f}-{CLOSE_WINDOW[1]:.2f} s",
        "verdict": f"join {'met' if join_met else 'missed'}, close {'met' if close_met else 'missed'}",
        "headline": f"join p50/p99/max {ms(j, 'p50', 'p99', 'max')} ms; close p50/p99/max "
        f"{c['p50']:.3f} / {c['p99']:.3f} / {c['max']:.3f} s, {r['close_outside_window']} of {n} outside "
        f"{CLOSE_WINDOW[0]:.2f}-{CLOSE_WINDOW[1]:.2f} s",
        "tables": [
            {
                "title": f"{n} users open one tab each (?live=1) at the same moment, then close them within 1 s",
                "columns": [
                    "burst",
                    "interval",
                    "p50",
                    "p90",
                    "p99",
                    "max",
                    "not measured",
                    "outside target",
                    "client CPU",
                ],
                "rows": [
                    [
                        "join",
                        "handshake done (client) -> 'Console log #1' (ms)",
                        *(f"{j[k] * 1000:.0f}" for k in ("p50", "p90", "p99", "max")),
                        f"{r['failed_handshakes']} failed handshakes, {r['join_not_running_in_60s']} not running in 60 s",
                        f"{r['join_over_target']} over {JOIN_P99 * 1000:.0f} ms",
                        f"{r['client_cpu_join_percent']:.0f}%",
                    ],
                    [
                        "close",
                        "close frame (client) -> 'UserStreamManager stopped' (s)",
                        *(f"{c[k]:.3f}" for k in ("p50", "p90", "p99", "max")),
                        f"{r['close_not_stopped_in_30s']} not stopped in 30 s",
                        f"{r['close_outside_window']} ({r['close_early']} early)",
                        f"{r['client_cpu_close_percent']:.0f}%",
                    ],
                    [
                        "close",
                        "close frame -> 'cleanup scheduled' (s)",
                        *(f"{r['close_to_scheduled_s'][k]:.3f}" for k in ("p50", "p90", "p99", "max")),
                        "",
                        "",
                        "",
                    ],
                ],
            }
        ],
        "notes": [
            *(
                [f"Handshakes that failed, by error: {r['handshake_errors']}"]
                if r["handshake_errors"]
                else []
            ),
            f"All {n} handshakes took {r['handshakes_done_s']:.2f} s (client view). 'Console log #1' carries the "
            "ConsoleLogger's own UTC µs timestamp; 'stopped' is the worker's asctime (1 ms).",
            "Client CPU in % of one core: the benchmark process (websockets clients) on the same 2 cores.",
        ],
        "data": r,
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
