"""5. Connections per daphne: connect cost side by side, and N concurrent sockets.

Two measurements, a and b, and the MONITOR attribution of a.

a. Connect cost side by side. Under one daphne each, CYCLES users connect and
   then disconnect, CONCURRENCY handshakes (then closes) at a time, against:
   our /ws/presence/ consumer (with ``?live=1`` as the page opens it, and
   without), a Channels consumer behind the same AuthMiddlewareStack that only
   accepts, and a bare ASGI app that accepts (benchmarks/asgi_floor.py).
   Reported: daphne CPU per connect+disconnect (psutil cpu_times over the
   batch, each phase running until daphne is idle again), connects per second
   per core of daphne CPU, and the Redis round trips daphne makes per connect
   and per disconnect (MONITOR over TCP, commands attributed to daphne's own
   connections by their port, so the worker's traffic is not counted; a
   MULTI..EXEC block counts once; commands run by Lua scripts are not round
   trips). Our consumer runs with a worker (as in production: its join diffs
   are consumed, its managers push status to ``?live=1`` sockets).

b. Connections held:
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
    close_all,
    commandstats,
    cpu_percent,
    environment,
    new_stack,
    open_all,
    quiet,
    raise_fd_limit,
    sample,
    take_failures,
)
from benchmarks.monitor import Monitor, client_ports, round_trips, script_names
from devtools.clients import amake_users
from devtools.processes import start_worker_ready
from devtools.redis import flushall, unix_url

CONCURRENCY = 100
HEARTBEAT = 10.0  # the default HEARTBEAT_INTERVAL

COST_CONCURRENCY = 20  # connects (then closes) in flight in the side-by-side batches
BASELINE_CONNECTS_PER_S = 155  # the 5,000-socket connect rate measured before the redesign
# label, ASGI application, path, runs a worker, session connected once before (a reload,
# a reconnect: every connect of a page after its session's first)
APPS = [
    ("ours, /ws/presence/?live=1 (as the page)", "streampai.asgi:application", "/ws/presence/?live=1", True,
     True),
    ("ours, /ws/presence/", "streampai.asgi:application", "/ws/presence/", True, True),
    ("ours, ?live=1, a session's first connect", "streampai.asgi:application", "/ws/presence/?live=1", True,
     False),
    ("Channels AuthMiddlewareStack + accept only", "benchmarks.asgi_floor:auth_accept_application",
     "/ws/presence/", False, True),
    ("bare ASGI accept", "benchmarks.asgi_floor:bare_application", "/ws/presence/", False, True),
]  # fmt: skip
FLOOR = 3  # the row of APPS the page socket is held against


async def connect_cost(
    tmp: Any, template: Any, server: Any, label: str, app: str, path: str, with_worker: bool, returning: bool,
    cycles: int, offset: int,
) -> dict[str, Any]:  # fmt: skip
    """One daphne running ``app``: CPU and Redis round trips per connect and per disconnect.

    ``returning``: each measured session connects and closes once before the
    measurement (as after a reload or a reconnect); otherwise each measured
    connect is its session's first (our handshake cache misses, dashboard/auth/ws_auth.py).
    """
    stack = new_stack(
        tmp,
        template,
        server,
        url=server.url,
        LIVESTREAM_HEARTBEAT_INTERVAL="600",  # no heartbeat in the windows
        LIVESTREAM_PRESENCE_TTL="1200",
    )
    warm_n = 10
    users = await amake_users(cycles + warm_n, start=offset)
    sessions = [s for _, s in users]
    scripts = script_names()
    try:
        web = stack.start_daphne(f"daphne-cost-{offset}", app=app)
        pids = {"daphne": web.popen.pid}
        if with_worker:
            worker = await start_worker_ready(stack, f"worker-cost-{offset}")
            pids["worker"] = worker.popen.pid
        warm = await open_all(web.url, sessions[:warm_n], warm_n, path)  # imports, pools, scripts loaded
        await close_all([o[0] for o in warm if o is not None])
        if returning:
            before = await open_all(web.url, sessions[warm_n:], COST_CONCURRENCY, path)
            await close_all([o[0] for o in before if o is not None], COST_CONCURRENCY)
            take_failures()
        await quiet(web.popen.pid)
        pid = web.popen.pid
        with Monitor(server.url) as monitor:
            me0, d0, t0 = sample(os.getpid()), sample(pid), time.time()
            opened = await open_all(web.url, sessions[warm_n:], COST_CONCURRENCY, path)
            connect_wall = time.time() - t0
            await quiet(pid)
            d1, t1 = sample(pid), time.time()
            sockets = [o[0] for o in opened if o is not None]
            await close_all(sockets, COST_CONCURRENCY)
            close_wall = time.time() - t1
            await quiet(pid)
            me2, d2, t2 = sample(os.getpid()), sample(pid), time.time()
            owners = client_ports(pids, server.port)
        rss = d2.rss
    finally:
        stack.stop_all()
        flushall(server)
    ok = len(sockets)

    def trips(window: tuple[float, float]) -> dict[str, float]:
        commands = [
            c for c in monitor.commands if window[0] <= c.at < window[1] and owners.get(c.client) == "daphne"
        ]
        return {
            k: v / max(ok, 1)
            for k, v in sorted(round_trips(commands, scripts).items(), key=lambda kv: -kv[1])
        }

    connect_trips, disconnect_trips = trips((t0, t1)), trips((t1, t2))
    connect_cpu, disconnect_cpu = d1.cpu - d0.cpu, d2.cpu - d1.cpu
    return {
        "label": label,
        "app": app,
        "path": path,
        "worker": with_worker,
        "returning": returning,
        "cycles": cycles,
        "connected": ok,
        "failed_handshakes": cycles - ok,
        "handshake_errors": take_failures(),
        "cpu_ms_per_connect": 1000 * connect_cpu / max(ok, 1),
        "cpu_ms_per_disconnect": 1000 * disconnect_cpu / max(ok, 1),
        "cpu_ms_per_cycle": 1000 * (connect_cpu + disconnect_cpu) / max(ok, 1),
        "connects_per_cpu_s": ok / connect_cpu if connect_cpu > 0 else float("nan"),
        "connects_per_s_wall": ok / connect_wall,
        "closes_per_s_wall": ok / close_wall if close_wall > 0 else float("nan"),
        "round_trips_per_connect": sum(connect_trips.values()),
        "round_trips_per_disconnect": sum(disconnect_trips.values()),
        "connect_by_command": connect_trips,
        "disconnect_by_command": disconnect_trips,
        "client_cpu_percent": cpu_percent(me0, me2),
        "daphne_cpu_percent": cpu_percent(d0, d2),
        "daphne_rss_mb": rss / 2**20,
    }


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


def cost_table(costs: list[dict[str, Any]]) -> tuple[list[list[str]], list[list[str]]]:
    rows, trips = [], []
    for c in costs:
        rows.append(
            [
                c["label"],
                f"{c['connected']:,} / {c['cycles']:,}",
                f"{c['cpu_ms_per_cycle']:.2f}",
                f"{c['cpu_ms_per_connect']:.2f} / {c['cpu_ms_per_disconnect']:.2f}",
                f"{c['connects_per_cpu_s']:,.0f}",
                f"{c['connects_per_s_wall']:,.0f}",
                f"{c['round_trips_per_connect']:.2f} / {c['round_trips_per_disconnect']:.2f}",
                f"{c['daphne_cpu_percent']:.0f}% / {c['client_cpu_percent']:.0f}%",
            ]
        )
        if c["connect_by_command"] or c["disconnect_by_command"]:
            for phase in ("connect", "disconnect"):
                parts = ", ".join(f"{k} {v:.2f}" for k, v in c[f"{phase}_by_command"].items())
                trips.append([c["label"], phase, parts or "none"])
    return rows, trips


def run(quick: bool) -> dict[str, Any]:
    raise_fd_limit()
    sizes = [200, 1000] if quick else [1000, 5000]
    hold = 12.0 if quick else 25.0
    cycles = 200 if quick else 1000
    with environment("daphne", tcp=True) as (tmp, template, server):
        costs = [
            asyncio.run(connect_cost(tmp, template, server, *spec, cycles=cycles, offset=(i + 10) * 100_000))
            for i, spec in enumerate(APPS)
        ]
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
    page, floor = costs[0], costs[FLOOR]
    goal_rate = 2.5 * BASELINE_CONNECTS_PER_S
    checks = {
        "CPU per connect+disconnect <= the auth-accept floor": page["cpu_ms_per_cycle"]
        <= floor["cpu_ms_per_cycle"],
        "<= 3 round trips per connect": page["round_trips_per_connect"] <= 3,
        "<= 3 round trips per disconnect": page["round_trips_per_disconnect"] <= 3,
        f">= {goal_rate:.0f} connects per CPU-second": page["connects_per_cpu_s"] >= goal_rate,
    }
    cost_rows, trip_rows = cost_table(costs)
    return {
        "title": "5. Connect cost and connections per daphne",
        "target": "our CPU per connect+disconnect <= a Channels auth+accept consumer's (same run); "
        f"<= 3 Redis round trips per connect and per disconnect; >= {goal_rate:.0f} (2.5 x "
        f"{BASELINE_CONNECTS_PER_S}) authenticated connects/s per daphne core",
        "verdict": "met"
        if all(checks.values())
        else "missed: " + "; ".join(k for k, v in checks.items() if not v),
        "headline": f"page socket {page['cpu_ms_per_cycle']:.2f} ms CPU per connect+disconnect vs "
        f"{floor['cpu_ms_per_cycle']:.2f} ms (auth+accept floor, {page['cpu_ms_per_cycle'] / floor['cpu_ms_per_cycle']:.1f}x); "
        f"{page['round_trips_per_connect']:.1f} / {page['round_trips_per_disconnect']:.1f} round trips; "
        f"{page['connects_per_cpu_s']:,.0f} connects per CPU-s; "
        f"{big['sockets']:,} sockets held: {big['connects_per_s']:,.0f} connects/s, "
        f"{big['rss_kb_per_socket']:.0f} KB RSS each",
        "tables": [
            {
                "title": f"a. Connect cost side by side: {cycles:,} users connect, then disconnect, "
                f"{COST_CONCURRENCY} at a time, one daphne each",
                "columns": [
                    "application",
                    "connected",
                    "daphne CPU ms per connect+disconnect",
                    "per connect / per disconnect (ms)",
                    "connects per CPU-second of daphne",
                    "connects/s (wall)",
                    "Redis round trips per connect / disconnect",
                    "daphne CPU / client CPU over the batch",
                ],
                "rows": cost_rows,
            },
            {
                "title": "a'. daphne's Redis round trips per socket, by command (MONITOR, daphne's connections only)",
                "columns": ["application", "phase", "round trips by command (key kind)"],
                "rows": trip_rows,
            },
            {
                "title": f"b. One daphne, sockets opened {CONCURRENCY} handshakes at a time, then held {hold:.0f} s "
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
            },
        ],
        "notes": [
            *(
                f"{r['sockets']:,}: handshakes that failed, by error: {r['handshake_errors']}"
                for r in results
                if r["handshake_errors"]
            ),
            *(
                f"a, {c['label']}: handshakes that failed: {c['handshake_errors']}"
                for c in costs
                if c["handshake_errors"]
            ),
            "a: CPU = daphne's user+system time from the first handshake until daphne is idle again after the last "
            "(each phase), divided by the sockets; 'connects per CPU-second' = sockets / CPU seconds of the "
            "connect phase, i.e. the rate one daphne core sustains when CPU-bound. Client CPU in % of one core "
            "(the load generator, same machine).",
            "a: 'ours' runs with a worker; the floors without. Targets: "
            + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()),
            "CPU in % of one core. Each connect = TCP + WebSocket handshake, session + user lookup in SQLite "
            "(AuthMiddlewareStack), same-origin check, track, join diff broadcast, group joins.",
            "The clients (websockets library) run in the benchmark process on the same 2 cores.",
            "Heartbeats seen = EVALSHA calls Redis served during the hold; expected = the beats due in the hold "
            "given each socket's own 10 s phase (from its handshake).",
        ],
        "data": {"connect_cost": costs, "sizes": results},
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
