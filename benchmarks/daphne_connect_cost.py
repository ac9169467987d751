"""daphne CPU and Redis round trips per dashboard connect + disconnect, against a baseline.

    .venv/bin/python -m benchmarks.daphne_connect_cost [SOCKETS] [--profile]

One daphne (benchmarks/accept_asgi.py), no worker, a private redis-server. For each
path (/ws/accept/: a Channels consumer that only accepts, behind the same
AuthMiddlewareStack; /ws/presence/: the dashboard socket) it opens SOCKETS sockets
(100 users, 50 handshakes at a time), closes them all, and reports daphne's CPU
per connect+disconnect (psutil user+system time), connects/s, and the Redis
commands daphne sent per connect and per disconnect (MONITOR; nothing else talks
to this Redis). --profile records daphne with py-spy during the presence rounds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from benchmarks.common import (
    BASE_DIR,
    close_all,
    configure_django,
    migrated_template,
    new_prefix,
    open_all,
    private_redis,
    raise_fd_limit,
    take_failures,
    unix_url,
    workdir,
)

# The dashboard's limits would refuse 10 sockets per user from one IP: off for this.
LIMITS_OFF = {"MAX_SOCKETS_PER_USER": "1000", "HANDSHAKE_RATE": "0"}


def cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def quiet(pid: int, limit: float = 30.0) -> float:
    """Wait until daphne is idle (< 2% of a core over 0.5 s); its CPU time then."""
    deadline = time.monotonic() + limit
    before = cpu(pid)
    while True:
        await asyncio.sleep(0.5)
        now = cpu(pid)
        if now - before < 0.01 or time.monotonic() > deadline:
            return now
        before = now


async def one_round(url: str, sessions: list[str], pid: int, mon_url: str, scripts: dict) -> dict:
    from benchmarks.monitor import Monitor, round_trips

    with Monitor(mon_url) as mon:
        c0, t0 = cpu(pid), time.monotonic()
        opened = await open_all(url, sessions, concurrency=50)
        t1 = time.monotonic()
        c1 = await quiet(pid)  # the last connects' Redis work done
        t_close = time.monotonic()
        mark = len(mon.commands)
        sockets = [o[0] for o in opened if o]
        await close_all(sockets)
        c2 = await quiet(pid)  # every disconnect handled
        t2 = time.monotonic()
    ok = len(sockets)
    connect_cmds = round_trips(mon.commands[:mark], scripts)
    disconnect_cmds = round_trips(mon.commands[mark:], scripts)
    return {
        "sockets": ok,
        "failures": take_failures(),
        "connects_per_s": round(ok / (t1 - t0), 1),
        "cpu_ms_per_connect": round(1000 * (c1 - c0) / max(ok, 1), 3),
        "cpu_ms_per_disconnect": round(1000 * (c2 - c1) / max(ok, 1), 3),
        "cpu_ms_per_connect_disconnect": round(1000 * (c2 - c0) / max(ok, 1), 3),
        "redis_per_connect": {k: round(v / max(ok, 1), 3) for k, v in connect_cmds.items()},
        "redis_per_disconnect": {k: round(v / max(ok, 1), 3) for k, v in disconnect_cmds.items()},
        "disconnect_phase_s": round(t2 - t_close, 2),
        "rss_mb": round(psutil.Process(pid).memory_info().rss / 2**20, 1),
    }


async def main(n: int, profile: bool) -> dict:
    from benchmarks.common import amake_users
    from benchmarks.monitor import script_names
    from livestream.conf import _DEFAULTS
    from tests.harness import BIN, free_port, wait_listening

    raise_fd_limit()
    users = await amake_users(100)
    sessions = [users[i % len(users)][1] for i in range(n)]
    stack = STACK
    port = free_port()
    proc = stack._spawn(
        "daphne",
        [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), "benchmarks.accept_asgi:application"],
        LIVESTREAM_HEARTBEAT_INTERVAL="600",
        **{f"LIVESTREAM_{k}": v for k, v in LIMITS_OFF.items() if k in _DEFAULTS},
    )
    proc.port, proc.url = port, f"http://127.0.0.1:{port}"
    wait_listening(port, proc)
    scripts = script_names()
    out: dict = {"sockets": n}
    spy = None
    try:
        for label, path in [("accept_only", "/ws/accept/"), ("presence", "/ws/presence/")] * 2:
            if profile and label == "presence" and spy is None:
                svg = BASE_DIR / "var" / "bench" / "daphne-connect.svg"
                svg.parent.mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(  # noqa: ASYNC220 (a profiler left running)
                    [
                        str(BIN / "py-spy"),
                        "record",
                        "-o",
                        str(svg),
                        "--pid",
                        str(proc.popen.pid),
                        "-r",
                        "200",
                        "--nonblocking",
                        "-f",
                        "speedscope" if svg.suffix == ".json" else "flamegraph",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1)
            url = proc.url
            result = await one_round_path(url, path, sessions, proc.popen.pid, scripts)
            out.setdefault(label, []).append(result)
            print(label, json.dumps(result), flush=True)
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait(30)
        proc.stop()
    return out


async def one_round_path(url: str, path: str, sessions: list[str], pid: int, scripts: dict) -> dict:
    import benchmarks.common as common
    from tests import harness

    original = harness.open_socket

    async def open_path(base_url, session, **kw):
        return await original(base_url, session, path=path, **kw)

    harness.open_socket = open_path
    try:
        return await one_round(url, sessions, pid, MON_URL, scripts)
    finally:
        harness.open_socket = original
        del common


if __name__ == "__main__":
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), "1000"))
    with workdir("connect-cost") as tmp, private_redis() as server:
        MON_URL = unix_url(server)
        template = migrated_template(tmp)
        db = tmp / "db.sqlite3"
        import shutil

        shutil.copy(template, db)
        configure_django(MON_URL, db, new_prefix())
        from tests.harness import Stack

        STACK = Stack(
            tmp, template, __import__("os").environ["LIVESTREAM_KEY_PREFIX"], env={"REDIS_URL": MON_URL}
        )
        result = asyncio.run(main(n, "--profile" in sys.argv))
        Path(BASE_DIR / "var" / "bench").mkdir(parents=True, exist_ok=True)
        (BASE_DIR / "var" / "bench" / f"connect-cost-{int(time.time())}.json").write_text(
            json.dumps(result, indent=1)
        )
