"""1. Presence cost: Redis round trips and microseconds per connect / disconnect.

Three measurements, a to c below, each with its own set-up and table; they answer
one question together, so they stay one benchmark.

a. PresenceStore alone, in this process: track / untrack / refresh timed one
   at a time, and the Redis round trips each makes (INFO commandstats: EVALSHA
   calls per operation; the commands the script runs inside Redis are reported
   apart, they are not round trips).
b. What a connect costs all told, with real daphne + runworker over TCP: every
   command MONITOR sees, attributed to the process that sent it, per connect
   and per disconnect (the presence store, the diff broadcast, the worker).
c. The peer, django-channels-more-than-present (database-backed), in its own
   virtualenv doing the same connects and disconnects, and the same thing
   for ours (track + diff broadcast, as dashboard/consumers.py does).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BASE_DIR,
    commandstats,
    configure_django,
    migrated_template,
    new_prefix,
    percentile,
    workdir,
)
from benchmarks.monitor import Monitor, client_ports, round_trips, script_names
from devtools.clients import amake_users
from devtools.redis import private_redis, unix_url

PERIODIC = ("leases.beat", "leases.epoch", "leases.renew", "presence.expire")
PERIODIC += ("leases.claim_orphans", "presence.unattended", "timers.claim")


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def meta(ref: str) -> dict[str, Any]:
    return {"email": f"{ref}@example.com", "joined_at": int(time.time()), "ref": ref}


# -- a. the store alone ------------------------------------------------------------------


async def store_costs(url: str, users: int) -> dict[str, Any]:
    from livestream.presence.store import PresenceStore

    store = PresenceStore()
    await store.track("warm", meta("warm"))  # loads the scripts once
    await store.untrack("warm", "warm")
    refs = [uuid.uuid4().hex for _ in range(users)]
    results: dict[str, Any] = {}

    async def timed(name: str, op: Any) -> None:
        before = commandstats(url)
        latencies = []
        start = time.perf_counter()
        for i in range(users):
            t = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
        calls = delta(before, commandstats(url))
        for noise in ("info", "client", "hello", "ping"):  # this client's own, not the store's
            calls.pop(noise, None)
        trips = calls.pop("evalsha", 0) + calls.pop("eval", 0)  # the store only runs scripts
        results[name] = {
            "us_mean": 1e6 * wall / users,
            "us_p50": 1e6 * percentile(latencies, 50),
            "us_p99": 1e6 * percentile(latencies, 99),
            "ops_per_s": users / wall,
            "round_trips_per_op": trips / users,
            "commands_inside_redis_per_op": {k: v / users for k, v in sorted(calls.items())},
        }

    await timed("track", lambda i: store.track(str(i), meta(refs[i])))
    await timed("refresh", lambda i: store.refresh(str(i), meta(refs[i])))
    await timed("untrack", lambda i: store.untrack(str(i), refs[i]))
    return {"users": users, **results}


async def connect_path(users: int, concurrency: int) -> dict[str, Any]:
    """What PresenceConsumer.connect / disconnect cost in Redis: one track / untrack, whose
    script also announces the change to the workers (the events LIST) and schedules or
    cancels the cleanup."""
    from livestream.presence.store import PresenceStore

    store = PresenceStore()
    refs = [uuid.uuid4().hex for _ in range(users)]
    base = 10**6  # user ids apart from store_costs'

    async def connect(i: int) -> None:
        await store.track(str(base + i), meta(refs[i]))

    async def disconnect(i: int) -> None:
        await store.untrack(str(base + i), refs[i])

    await connect(-1)
    await disconnect(-1)

    async def phase(op: Any) -> dict[str, float]:
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []

        async def one(i: int) -> None:
            async with gate:
                t = time.perf_counter()
                await op(i)
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(users)))
        wall = time.perf_counter() - start
        return {
            "ops_per_s": users / wall,
            "us_mean": 1e6 * sum(latencies) / users,
            "us_p50": 1e6 * percentile(latencies, 50),
            "us_p99": 1e6 * percentile(latencies, 99),
        }

    result = {"users": users, "concurrency": concurrency, "connect": await phase(connect)}
    result["disconnect"] = await phase(disconnect)
    return result


# -- b. end to end, attributed by process -------------------------------------------------


async def end_to_end(redis: Any, tmp: Path, template: Path, sockets: int) -> dict[str, Any]:
    from django.db import connections

    from devtools.clients import open_socket
    from devtools.processes import Stack

    connections.close_all()
    tcp_url = redis.url
    stack = Stack(
        tmp,
        template,
        new_prefix(),
        env={
            "REDIS_URL": tcp_url,
            # Keep periodic traffic out of the window: no heartbeat, no cleanup firing.
            "LIVESTREAM_HEARTBEAT_INTERVAL": "600",
            "LIVESTREAM_PRESENCE_TTL": "1200",
            "LIVESTREAM_CLEANUP_TIMEOUT": "600",
        },
    )
    try:
        users = await amake_users(sockets + 1)
        web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=60)
        warm = await open_socket(web.url, users[-1][1], open_timeout=60)
        await worker.log.wait_for(rf"UserStreamManager started: {users[-1][0]}\b", timeout=60)
        mark = worker.log.mark()
        scripts = script_names()
        with Monitor(tcp_url) as monitor:
            t0 = time.time()
            opened = [await open_socket(web.url, session, open_timeout=60) for _, session in users[:sockets]]
            t_connected = time.time()
            await worker.log.wait_for(r"UserStreamManager started: ", timeout=120, after=mark, count=sockets)
            t1 = time.time()
            for ws in opened:
                await ws.close()
            await worker.log.wait_for(r"cleanup scheduled: ", timeout=120, after=mark, count=sockets)
            t2 = time.time()
            owners = client_ports({"daphne": web.popen.pid, "worker": worker.popen.pid}, redis.port)
        await warm.close()
    finally:
        stack.stop_all()

    def per(window: tuple[float, float], who: str) -> Counter[str]:
        cmds = [
            c
            for c in monitor.commands
            if window[0] <= c.at < window[1] and owners.get(c.client, "other") == who
        ]
        return round_trips(cmds, scripts)

    result: dict[str, Any] = {"sockets": sockets, "window_s": {"connect": t1 - t0, "disconnect": t2 - t1}}
    for phase, window in (("connect", (t0, t1)), ("disconnect", (t1, t2))):
        for who in ("daphne", "worker"):
            counts = per(window, who)
            periodic = {k: v for k, v in counts.items() if _periodic(k)}
            direct = {k: v / sockets for k, v in counts.items() if not _periodic(k)}
            result[f"{phase}_{who}"] = {
                "round_trips_per_op": sum(direct.values()),
                "by_command": dict(sorted(direct.items(), key=lambda kv: -kv[1])),
                "periodic_excluded": periodic,
            }
    result["connect_client_s"] = t_connected - t0
    return result


def _category(label: str) -> str:
    if label.startswith("EVALSHA presence."):
        return "store"
    if "channel presence-manager" in label or "group users_presence" in label:
        return "diff"
    return "other"


def _periodic(label: str) -> bool:
    return any(label.endswith(p) for p in PERIODIC) or (label.startswith("MULTI[") and "DEL" in label)


# -- c. the peer -------------------------------------------------------------------------


def run_peer(url: str, tmp: Path, users: int, *extra: str) -> dict[str, Any]:
    from benchmarks.peer_venv import peer_python

    python = peer_python()
    db = tmp / f"peer-{uuid.uuid4().hex[:6]}.sqlite3"
    out = subprocess.run(
        [
            str(python),
            str(BASE_DIR / "benchmarks" / "peer_presence.py"),
            "--redis-url",
            url,
            "--db",
            str(db),
            "--users",
            str(users),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"peer benchmark failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout)


def peer_round_trips(url: str, tmp: Path, users: int, *extra: str) -> dict[str, Any]:
    scripts = script_names()
    with Monitor(url) as monitor:
        run_peer(url, tmp, users, *extra)
    counts = round_trips(monitor.commands, scripts)
    return {k: v for k, v in counts.items()}


# -- the benchmark ---------------------------------------------------------------------------


def run(quick: bool) -> dict[str, Any]:
    n = 300 if quick else 3000
    peer_n = 200 if quick else 1000
    sockets = 20 if quick else 100
    with workdir("presence") as tmp, private_redis(tcp=True) as redis:
        url = unix_url(redis)
        template = migrated_template(tmp)
        configure_django(url, tmp / "db.sqlite3", new_prefix())
        store = asyncio.run(store_costs(url, n))
        ours_seq = asyncio.run(connect_path(n, 1))
        ours_conc = asyncio.run(connect_path(n, 32))
        e2e = asyncio.run(end_to_end(redis, tmp, template, sockets))
        peer_trips_n = 50
        try:
            peer_seq = run_peer(url, tmp, peer_n)
            peer_conc = run_peer(url, tmp, peer_n, "--concurrency", "32")
            # The documented receiver's group_send reaches every member: its cost grows with the room.
            peer_bcast = run_peer(url, tmp, peer_n // 3, "--broadcast")
            peer_trips = peer_round_trips(url, tmp, peer_trips_n)
            peer_error = None
        except Exception as exc:  # e.g. no network to install the peer: ours is still measured
            peer_seq = peer_conc = peer_bcast = not_measured(peer_n // 3)
            peer_trips = {}
            peer_error = f"{type(exc).__name__}: {str(exc)[-300:]}"
    result = report(
        store, ours_seq, ours_conc, e2e, peer_seq, peer_conc, peer_bcast, peer_trips, peer_trips_n
    )
    if peer_error:
        result["notes"].insert(0, f"The peer could not be measured (its columns are nan): {peer_error}")
    return result


def not_measured(users: int) -> dict[str, Any]:
    """The peer's result shape with every number NaN (rendered 'nan'; null in the JSON)."""
    nan = float("nan")
    op = {"ops_per_s": nan, "us_p50": nan, "us_mean": nan, "us_p99": nan, "sql_per_op": nan}
    return {"users": users, "connect": dict(op), "disconnect": dict(op)}


def report(
    store: dict, ours_seq: dict, ours_conc: dict, e2e: dict, peer_seq: dict, peer_conc: dict,
    peer_bcast: dict, peer_trips: dict, peer_trips_n: int,
) -> dict[str, Any]:  # fmt: skip
    # The peer's connect is group_add (ZADD + EXPIRE), its disconnect group_discard (ZREM); the
    # counted run also made one warm-up connect and disconnect.
    ops = peer_trips_n + 1
    peer_rt = {
        "connect": sum(v for k, v in peer_trips.items() if k.startswith(("ZADD", "EXPIRE"))) / ops,
        "disconnect": sum(v for k, v in peer_trips.items() if k.startswith("ZREM")) / ops,
    }

    def fmt(x: float) -> str:
        return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"

    store_rows = [
        [op, f"{v['round_trips_per_op']:.2f}", fmt(v["us_mean"]), fmt(v["us_p50"]), fmt(v["us_p99"]), f"{v['ops_per_s']:,.0f}", ", ".join(f"{k} {c:g}" for k, c in v["commands_inside_redis_per_op"].items())]
        for op, v in store.items()
        if op != "users"
    ]  # fmt: skip
    e2e_rows = []
    for phase in ("connect", "disconnect"):
        for who in ("daphne", "worker"):
            row = e2e[f"{phase}_{who}"]
            parts = Counter()
            for label, v in row["by_command"].items():
                parts[_category(label)] += v
            other = [f"{k} {v:.2f}" for k, v in row["by_command"].items() if _category(label=k) == "other"]
            e2e_rows.append(
                [
                    phase,
                    who,
                    f"{row['round_trips_per_op']:.2f}",
                    f"{parts['store']:.2f}",
                    f"{parts['diff']:.2f}",
                    f"{parts['other']:.2f}: " + ", ".join(other),
                ]
            )
    cmp_rows = []
    for label, ours, peer in (
        ("connect, store only (track vs Room.objects.add)", store["track"], peer_seq["connect"]),
        ("disconnect, store only (untrack vs Room.objects.remove)", store["untrack"], peer_seq["disconnect"]),
        ("connect, one at a time", ours_seq["connect"], peer_seq["connect"]),
        ("disconnect, one at a time", ours_seq["disconnect"], peer_seq["disconnect"]),
        ("connect, 32 at once", ours_conc["connect"], peer_conc["connect"]),
        ("disconnect, 32 at once", ours_conc["disconnect"], peer_conc["disconnect"]),
    ):
        cmp_rows.append(
            [
                label,
                f"{ours['ops_per_s']:,.0f}",
                fmt(ours["us_p50"]),
                f"{peer['ops_per_s']:,.0f}",
                fmt(peer["us_p50"]),
                f"{ours['ops_per_s'] / peer['ops_per_s']:.1f}x",
            ]
        )
    peer_cost_rows = [
        [op, f"{peer_seq[op]['sql_per_op']:.1f}", f"{peer_rt[op]:.2f}", f"{peer_bcast[op]['ops_per_s']:,.0f}"]
        for op in ("connect", "disconnect")
    ]
    track = store["track"]["round_trips_per_op"]
    untrack = store["untrack"]["round_trips_per_op"]
    ratio = ours_seq["connect"]["ops_per_s"] / peer_seq["connect"]["ops_per_s"]
    store_ratio = store["track"]["ops_per_s"] / peer_seq["connect"]["ops_per_s"]
    return {
        "title": "1. Presence cost",
        "target": "1 Redis round trip per connect and per disconnect (presence store)",
        "verdict": "met" if track == 1 and untrack == 1 else "missed",
        "headline": f"{track:g} round trip per track, {untrack:g} per untrack; "
        f"{store['track']['us_mean']:.0f} µs / {store['untrack']['us_mean']:.0f} µs; "
        f"connects/s vs the peer: {store_ratio:.0f}x (store only), {ratio:.1f}x (with the diff broadcast)",
        "tables": [
            {
                "title": f"a. PresenceStore in one process ({store['users']:,} users, one await at a time, "
                "unix socket)",
                "columns": [
                    "op",
                    "round trips",
                    "µs mean",
                    "µs p50",
                    "µs p99",
                    "ops/s",
                    "commands run inside Redis per op",
                ],
                "rows": store_rows,
            },
            {
                "title": f"b. Real daphne + worker over TCP, {e2e['sockets']} sockets opened then closed one by one "
                "(MONITOR, attributed by the client's TCP port; periodic worker ticks excluded)",
                "columns": [
                    "phase",
                    "process",
                    "round trips per socket",
                    "presence store",
                    "diff (presence-manager channel, users_presence group)",
                    "everything else, by command (key)",
                ],
                "rows": e2e_rows,
            },
            {
                "title": "c. Same connects/disconnects: ours (track + diff broadcast, as PresenceConsumer) vs "
                "django-channels-more-than-present 2.0.1 (Room.objects.add/remove in a sync-consumer thread, SQLite)",
                "columns": [
                    "operation",
                    "ours ops/s",
                    "ours µs p50",
                    "peer ops/s",
                    "peer µs p50",
                    "throughput ratio",
                ],
                "rows": cmp_rows,
            },
            {
                "title": "d. The peer's cost per operation (Redis round trips measured with MONITOR)",
                "columns": [
                    "operation",
                    "SQL statements",
                    "Redis round trips",
                    f"ops/s with the docs' presence_changed broadcast receiver ({peer_bcast['users']} users)",
                ],
                "rows": peer_cost_rows,
            },
        ],
        "notes": [
            "Round trips of the presence store = EVALSHA calls counted by INFO commandstats; the commands a "
            "Lua script runs inside Redis are listed apart (they cost Redis CPU, not a network round trip).",
            "c: 'store only' compares our PresenceStore alone (a) with the peer's whole add/remove (its only "
            "presence work); the other rows add our diff broadcast, which the peer does not do by default. "
            "'32 at once' = 32 operations in flight in one event loop (the peer's calls then queue for "
            "database_sync_to_async's single thread, as they do in a consumer).",
            "The diff broadcast on top of the store (b, daphne rows): channels-redis group_send (ZREMRANGEBYSCORE + "
            "ZRANGE, no EVAL while nobody is in the group) plus send to the worker channel (ZREMRANGEBYSCORE + "
            "ZCOUNT + ZADD + EXPIRE). The worker rows are the worker reading the diff and acting on it.",
            f"Peer round trips under MONITOR: {dict(sorted(peer_trips.items()))} over "
            f"{peer_trips_n + 1} connects + {peer_trips_n + 1} disconnects.",
            "The peer's --broadcast run adds the presence_changed receiver its documentation shows "
            "(group_send to the room); every member of the room receives it, so its cost grows with the room.",
        ],
        "data": {
            "store": store,
            "ours_sequential": ours_seq,
            "ours_concurrent": ours_conc,
            "end_to_end": e2e,
            "peer_sequential": peer_seq,
            "peer_concurrent": peer_conc,
            "peer_broadcast": peer_bcast,
            "peer_round_trips": peer_trips,
        },
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
