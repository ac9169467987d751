"""3. Cleanup precision: last tab closed -> that user's manager stopped.

Real daphne + runworker with the default CLEANUP_TIMEOUT (5 s). Every user
has one tab, every other user two; once all managers run, the tabs close in a
random order spread over 5 s (steady churn), then in a second run over 1 s (a
burst); a user's other tab closes first, its last tab 0.3 s later. Per user:

* close: time.time() in the client just before it sends the close frame of
  the user's last tab;
* stopped: the worker's ``UserStreamManager stopped: <uid>`` line (asctime,
  millisecond resolution); ``cleanup scheduled`` splits the delay in two.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

from benchmarks.common import (
    environment,
    new_stack,
    open_all,
    paired,
    summary,
    wait_until,
)
from devtools.clients import amake_users
from devtools.logs import event_times
from devtools.redis import flushall
from livestream import logformats

TARGET = (5.00, 5.10)


async def measure(
    tmp: Any, template: Any, server: Any, users_count: int, spread: float = 1.0, **env: str
) -> dict[str, Any]:
    stack = new_stack(tmp, template, server, **env)
    users = await amake_users(users_count)
    try:
        web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=60)
        tabs = [(uid, session) for uid, session in users] + [
            (uid, s) for i, (uid, s) in enumerate(users) if i % 2 == 0
        ]
        opened = await open_all(web.url, [s for _, s in tabs], concurrency=100)
        failed = sum(o is None for o in opened)
        # a user with a failed handshake is left out (counted), not a crash
        bad = {uid for (uid, _), o in zip(tabs, opened, strict=True) if o is None}
        uids = {uid for uid, _ in users} - bad

        def all_started() -> bool:
            return uids <= event_times(worker.log.text(), logformats.MANAGER_STARTED).keys()

        await wait_until(all_started, timeout=120, what="all managers started", interval=0.2, required=False)
        mark = worker.log.mark()
        by_user: dict[str, list[Any]] = {}
        for (uid, _), o in zip(tabs, opened, strict=True):
            if o is not None:
                by_user.setdefault(uid, []).append(o[0])
        rng = random.Random(5)
        closed_at: dict[str, float] = {}

        async def close_user(uid: str, sockets: list[Any]) -> None:
            await asyncio.sleep(rng.uniform(0, spread))
            for extra in sockets[1:]:  # not the last tab: nothing may be scheduled
                await extra.close()
                await asyncio.sleep(0.3)
            closed_at[uid] = time.time()
            await sockets[0].close()

        await asyncio.gather(*(close_user(uid, by_user[uid]) for uid in uids))

        def all_stopped() -> bool:
            return uids <= event_times(worker.log.text()[mark:], logformats.MANAGER_STOPPED).keys()

        await wait_until(all_stopped, timeout=60, what="all managers stopped", interval=0.2, required=False)
        text = worker.log.text()[mark:]
    finally:
        stack.stop_all()
        flushall(server)
    stopped = event_times(text, logformats.MANAGER_STOPPED)
    scheduled = event_times(text, logformats.CLEANUP_SCHEDULED)
    delays, not_stopped = paired(stopped, closed_at, uids)
    return {
        "users": users_count,
        "tabs": len(tabs),
        "failed_handshakes": failed,
        "users_left_out": len(bad),
        "not_stopped_in_60s": len(not_stopped),
        "close_to_stopped_s": summary(delays),
        "close_to_scheduled_s": summary(paired(scheduled, closed_at, uids)[0]),
        "scheduled_to_stopped_s": summary(paired(stopped, scheduled, uids)[0]),
        "in_target": sum(TARGET[0] <= d <= TARGET[1] for d in delays),
        "premature": sum(d < TARGET[0] for d in delays),
    }


SPREADS = (5.0, 1.0)  # seconds over which the users' tabs close: steady churn, then a burst


def run(quick: bool) -> dict[str, Any]:
    users = 30 if quick else 200
    with environment("cleanup") as (tmp, template, server):
        results = [asyncio.run(measure(tmp, template, server, users, spread)) for spread in SPREADS]
    for r, spread in zip(results, SPREADS, strict=True):
        r["spread_s"] = spread
    rows = []
    for r in results:
        for name, key in (
            ("last tab close -> manager stopped", "close_to_stopped_s"),
            ("last tab close -> cleanup scheduled", "close_to_scheduled_s"),
            ("cleanup scheduled -> manager stopped", "scheduled_to_stopped_s"),
        ):
            st = r[key]
            rows.append(
                [f"over {r['spread_s']:g} s", name] + [f"{st[p]:.3f}" for p in ("p50", "p90", "p99", "max")]
            )
    main = results[0]
    d = main["close_to_stopped_s"]
    met = bool(d["n"]) and TARGET[0] <= d["p50"] and d["p99"] <= TARGET[1] and not main["not_stopped_in_60s"]
    burst = results[1]["close_to_stopped_s"]
    return {
        "title": "3. Cleanup precision",
        "target": f"last tab close -> manager stopped within {TARGET[0]:.2f} to {TARGET[1]:.2f} s (CLEANUP_TIMEOUT 5 s)",
        "verdict": ("met" if met else "missed") + f" (tabs closing over {SPREADS[0]:g} s)",
        "headline": f"{main['users']} users, closes over {SPREADS[0]:g} s: p50 {d['p50']:.3f} s, p99 {d['p99']:.3f} s; "
        f"all within {SPREADS[1]:g} s: p50 {burst['p50']:.3f} s, p99 {burst['p99']:.3f} s",
        "tables": [
            {
                "title": f"{main['users']} users ({main['tabs']} tabs: every other user has two), each user's tabs "
                "closed at a random moment within the spread, the other tab 0.3 s before the last",
                "columns": ["tabs closed", "interval", "p50 (s)", "p90 (s)", "p99 (s)", "max (s)"],
                "rows": rows,
            }
        ],
        "notes": [
            *(
                f"Over {r['spread_s']:g} s: {r['in_target']} of {r['users']} users within the target window, "
                f"{r['premature']} stopped early, {r['not_stopped_in_60s']} not stopped within 60 s, "
                f"{r['users_left_out']} left out (a handshake failed)."
                for r in results
            ),
            "Stop and schedule times are the worker's log asctime (1 ms resolution); close times are the client's "
            "(just before it sends the close frame).",
        ],
        "data": {"runs": results},
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
