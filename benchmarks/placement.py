"""10. Placement: which worker runs whose manager.

Two workers; USERS users each open two dashboard tabs, one after the other
(the second once the first's handshake is done). Which worker logged
``UserStreamManager started: <uid>`` for each user says how the managers are
spread. Then a third worker starts, and USERS new users do the same: how many
of them does the new worker get? Users whose manager never started (or
started in two workers) are counted, not dropped.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from typing import Any

from benchmarks.common import (
    environment,
    new_stack,
    wait_until,
)
from devtools.clients import amake_users
from devtools.logs import event_times
from devtools.processes import start_worker_ready
from devtools.redis import flushall
from livestream import logformats

USERS = 12


def owners(workers: list[Any], uids: list[str]) -> dict[str, list[str]]:
    """uid -> the workers that logged 'UserStreamManager started' for it."""
    found: dict[str, list[str]] = {u: [] for u in uids}
    for w in workers:
        started = event_times(w.log.text(), logformats.MANAGER_STARTED)
        for u in uids:
            if u in started:
                found[u].append(w.name)
    return found


async def round_of(web: Any, workers: list[Any], users: list[tuple[str, str]]) -> dict[str, Any]:
    from devtools.clients import open_socket

    sockets = []
    failed = 0
    for _, session in users:
        for _tab in range(2):
            try:
                sockets.append(
                    await open_socket(web.url, session, path="/ws/presence/?live=1", open_timeout=30)
                )
            except Exception:
                failed += 1
    uids = [u for u, _ in users]
    await wait_until(
        lambda: all(owners(workers, uids).values()), timeout=20, what="managers", interval=0.2, required=False
    )
    await asyncio.sleep(1.5)  # a second worker that also started one would have logged it by now
    found = owners(workers, uids)
    per_worker = Counter(w for ws in found.values() for w in ws)
    return {
        "users": len(uids),
        "failed_handshakes": failed,
        "per_worker": {w.name: per_worker.get(w.name, 0) for w in workers},
        "never_started": sum(1 for ws in found.values() if not ws),
        "in_two_workers": sum(1 for ws in found.values() if len(set(ws)) > 1),
        "sockets": sockets,
    }


async def measure(tmp: Any, template: Any, server: Any, n: int) -> dict[str, Any]:
    stack = new_stack(tmp, template, server)
    users = await amake_users(2 * n)
    sockets: list[Any] = []
    try:
        web = stack.start_daphne()
        workers = [await start_worker_ready(stack, "worker-1"), await start_worker_ready(stack, "worker-2")]
        await asyncio.sleep(2.0)  # both registered as live workers
        first = await round_of(web, workers, users[:n])
        sockets += first.pop("sockets")
        workers.append(await start_worker_ready(stack, "worker-3"))
        await asyncio.sleep(2.0)
        second = await round_of(web, workers, users[n:])
        sockets += second.pop("sockets")
        # did the new worker take over managers of the first round (a rebalance)?
        moved = owners(workers[2:], [u for u, _ in users[:n]])
        second["first_round_moved_to_new_worker"] = sum(1 for ws in moved.values() if ws)
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        stack.stop_all()
        flushall(server)
    return {"two_workers": first, "third_worker": second}


def run(quick: bool) -> dict[str, Any]:
    n = 6 if quick else USERS
    with environment("placement") as (tmp, template, server):
        r = asyncio.run(measure(tmp, template, server, n))
    a, b = r["two_workers"], r["third_worker"]

    def row(label: str, x: dict[str, Any]) -> list[str]:
        return [
            label,
            f"{x['users']}",
            " / ".join(f"{w} {c}" for w, c in x["per_worker"].items()),
            str(x["never_started"]),
            str(x["in_two_workers"]),
            str(x["failed_handshakes"]),
        ]

    return {
        "title": "10. Placement",
        "target": "(none set) how managers spread over workers, and what a new worker gets",
        "verdict": "measured",
        "headline": "2 workers: "
        + " / ".join(str(c) for c in a["per_worker"].values())
        + f" of {a['users']}; after a 3rd: new users "
        + " / ".join(str(c) for c in b["per_worker"].values())
        + f" (the new worker got {b['per_worker'].get('worker-3', 0)} of {b['users']})",
        "tables": [
            {
                "title": f"{n} users each open two tabs (?live=1) in sequence; managers per worker "
                "(from 'UserStreamManager started' in each worker's log)",
                "columns": [
                    "round",
                    "users",
                    "managers per worker",
                    "never started",
                    "started in two workers",
                    "failed handshakes",
                ],
                "rows": [row("2 workers", a), row("3rd worker started, new users", b)],
            }
        ],
        "notes": [
            f"After the 3rd worker started, {b['first_round_moved_to_new_worker']} of the first round's users "
            "had their manager started in it as well (a takeover or rebalance)."
        ],
        "data": r,
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
