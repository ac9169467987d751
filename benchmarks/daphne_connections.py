"""5. Connections per daphne: N concurrent authenticated WebSockets on one daphne.

One daphne (no worker: this measures daphne alone; the join diffs wait in the
worker channel). N users with a session each open one dashboard socket, at
most CONCURRENCY handshakes in flight. Then the sockets stay open for at
least two heartbeat intervals (HEARTBEAT_INTERVAL, 10 s by default: every
socket refreshes its presence in Redis) before all close.

Reported: connect rate, daphne's CPU while connecting and while holding the
sockets (heartbeats only), its RSS and RSS per connection, the heartbeats
Redis saw, and sockets that dropped.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from benchmarks.common import (
    amake_users,
    close_all,
    configure_django,
    cpu_percent,
    flushall,
    migrated_template,
    new_prefix,
    new_stack,
    open_all,
    private_redis,
    raise_fd_limit,
    sample,
    take_failures,
    unix_url,
    workdir,
)
from benchmarks.presence_cost import commandstats

CONCURRENCY = 100
HEARTBEAT = 10.0  # the default HEARTBEAT_INTERVAL


async def one_size(tmp: Any, template: Any, server: Any, n: int, hold: float, offset: int) -> dict[str, Any]:
    stack = new_stack(tmp, template, server)
    users = await amake_users(n, start=offset)
    try:
        web = stack.start_daphne(f"daphne-{n}")
        await asyncio.sleep(1.0)  # let it finish importing before the clock starts
        me = sample(os.getpid())
        idle = sample(web.popen.pid)
        t0 = time.monotonic()
        opened = await open_all(web.url, [s for _, s in users], CONCURRENCY)
        connect_s = time.monotonic() - t0
        connected = sample(web.popen.pid)
        me_connected = sample(os.getpid())
        opened_ok = [o for o in opened if o is not None]
        sockets = [ws for ws, _ in opened_ok]
        stats_before = commandstats(unix_url(server))
        hold_from = time.time()
        await asyncio.sleep(hold)
        hold_to = time.time()
        held = sample(web.popen.pid)
        stats_after = commandstats(unix_url(server))
        still_open = sum(ws.state.name == "OPEN" for ws in sockets)
        await close_all(sockets)
    finally:
        stack.stop_all()
        flushall(server)
    heartbeats = stats_after.get("evalsha", 0) - stats_before.get("evalsha", 0)
    return {
        "sockets": n,
        "failed_handshakes": sum(o is None for o in opened),
        "handshake_errors": take_failures(),
        "connect_s": connect_s,
        "connects_per_s": len(sockets) / connect_s,
        "daphne_cpu_connecting_percent": cpu_percent(idle, connected),
        "client_cpu_connecting_percent": cpu_percent(me, me_connected),
        "hold_s": hold,
        "daphne_cpu_holding_percent": cpu_percent(connected, held),
        "heartbeats_per_s": heartbeats / hold,
        # Each socket beats every HEARTBEAT s from its accept (~ its handshake time).
        "heartbeats_expected_per_s": sum(
            int((hold_to - t) // HEARTBEAT) - int((hold_from - t) // HEARTBEAT) for _, t in opened_ok
        )
        / hold,
        "idle_rss_mb": idle.rss / 2**20,
        "rss_mb": held.rss / 2**20,
        "rss_kb_per_socket": (held.rss - idle.rss) / 1024 / n,
        "still_open_after_hold": still_open,
    }


def run(quick: bool) -> dict[str, Any]:
    raise_fd_limit()
    sizes = [200, 1000] if quick else [1000, 5000]
    hold = 12.0 if quick else 25.0
    with workdir("daphne") as tmp, private_redis() as server:
        template = migrated_template(tmp)
        configure_django(unix_url(server), tmp / "db.sqlite3", new_prefix())
        results = [
            asyncio.run(one_size(tmp, template, server, n, hold, offset=i * 100_000))
            for i, n in enumerate(sizes)
        ]
    rows = [
        [
            f"{r['sockets']:,}",
            f"{r['connects_per_s']:,.0f}",
            f"{r['daphne_cpu_connecting_percent']:.0f}%",
            f"{r['daphne_cpu_holding_percent']:.0f}%",
            f"{r['heartbeats_per_s']:,.0f} / {r['heartbeats_expected_per_s']:,.0f}",
            f"{r['rss_mb']:.0f} MB",
            f"{r['rss_kb_per_socket']:.0f} KB",
            f"{r['still_open_after_hold']:,}",
            str(r["failed_handshakes"]),
        ]
        for r in results
    ]
    big = results[-1]
    return {
        "title": "5. Connections per daphne",
        "target": "(none set) 1,000 and 5,000 authenticated sockets with heartbeats on one daphne",
        "verdict": "measured",
        "headline": f"{big['sockets']:,} sockets: {big['connects_per_s']:,.0f} connects/s, "
        f"{big['rss_kb_per_socket']:.0f} KB RSS each, {big['daphne_cpu_holding_percent']:.0f}% CPU holding them",
        "tables": [
            {
                "title": f"One daphne, sockets opened {CONCURRENCY} handshakes at a time, then held {hold:.0f} s "
                f"(heartbeat every {HEARTBEAT:.0f} s)",
                "columns": [
                    "sockets",
                    "connects/s",
                    "daphne CPU connecting",
                    "daphne CPU holding",
                    "heartbeats/s seen / expected",
                    "daphne RSS",
                    "RSS per socket",
                    "open after the hold",
                    "failed handshakes",
                ],
                "rows": rows,
            }
        ],
        "notes": [
            *(
                f"{r['sockets']:,}: handshakes that failed, by error: {r['handshake_errors']}"
                for r in results
                if r["handshake_errors"]
            ),
            "CPU in % of one core. Each connect = TCP + WebSocket handshake, session + user lookup in SQLite "
            "(AuthMiddlewareStack), same-origin check, track, join diff broadcast, group joins.",
            "The clients (websockets library) run in the benchmark process on the same 2 cores.",
            "Heartbeats seen = EVALSHA calls Redis served during the hold; expected = the beats due in the hold "
            "given each socket's own 10 s phase (from its handshake).",
        ],
        "data": {"sizes": results},
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
