"""20. Webhook flood: another user's command round trip while the alert webhook is flooded.

Real daphne + one runworker (ConsoleLogger and tests.components.Echo). A "victim" user's
tab sends Echo ``whoami`` commands at a steady pace (one every PACE s) and times each
round trip at the client. Meanwhile a load generator in a separate process (raw
keep-alive HTTP/1.1 connections, pre-built requests, paced to FLOOD_RATE per second)
POSTs alerts to the webhook from one address: to a stranger's URL with wrong secrets
(404s) and to its own valid URL (202s until its rate and queue run out).

Three phases on three daphnes sharing the worker, Redis and database:
  baseline   no flood;
  unlimited  the flood with the webhook's rate limits off (ALERT_RATE_PER_IP=0,
             ALERT_RATE_PER_USER=0): every POST runs Django, as before issue 20.4;
  limited    the flood with the default limits: over ALERT_RATE_PER_IP the 429 is
             answered before Django (alerts/gate.py).
Target (issue 20): the victim's command p99 stays under 50 ms while flooded. The
generator's and daphne's CPU are sampled: a generator near 100% of a core would be
setting the pace itself.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections import Counter
from typing import Any

from benchmarks.common import (
    configure_django,
    cpu_percent,
    migrated_template,
    new_prefix,
    new_stack,
    open_all,
    sample,
    summary,
    workdir,
)
from devtools.clients import amake_users
from devtools.processes import start_worker_ready
from devtools.redis import flushall, private_redis, unix_url

FLOOD_RATE = 150.0  # POSTs per second (the issue measured ~120)
CONNECTIONS = 8
PACE = 0.02  # seconds between the victim's commands
BODY = json.dumps({"kind": "donation", "from": "Flood", "amount": 1, "currency": "EUR"}).encode()


# -- the load generator (its own process) --------------------------------------------


async def _connection(
    port: int, requests: list[bytes], start: float, step: float, codes: Counter[str]
) -> None:
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i, request in enumerate(requests):
            delay = start + i * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            length, chunked = 0, False
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                    await reader.readexactly(size + 2)
                await reader.readuntil(b"\r\n")
            elif length:
                await reader.readexactly(length)
            codes[status] += 1
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        codes[f"error {type(exc).__name__}"] += 1
    finally:
        if writer is not None:
            writer.close()


def _request(path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _flood(port: int, paths: list[str], rate: float, seconds: float) -> dict[str, Any]:
    import os

    import psutil

    total = int(rate * seconds)
    step = CONNECTIONS / rate
    codes: Counter[str] = Counter()
    start = time.monotonic() + 0.1
    me = psutil.Process(os.getpid())
    cpu0 = sum(me.cpu_times()[:2])
    await asyncio.gather(
        *(
            _connection(
                port,
                [_request(paths[(c + k * CONNECTIONS) % len(paths)]) for k in range(total // CONNECTIONS)],
                start + c * (1 / rate),
                step,
                codes,
            )
            for c in range(CONNECTIONS)
        )
    )
    wall = time.monotonic() - start
    sent = sum(v for k, v in codes.items() if not k.startswith("error"))
    return {
        "codes": dict(codes),
        "sent": sent,
        "rate": round(sent / wall, 1),
        "generator_cpu_percent": round(100 * (sum(me.cpu_times()[:2]) - cpu0) / wall, 1),
    }


def flood_main(argv: list[str]) -> None:
    port, rate, seconds, paths = int(argv[0]), float(argv[1]), float(argv[2]), argv[3:]
    print(json.dumps(asyncio.run(_flood(port, paths, rate, seconds))), flush=True)


# -- the measurement ---------------------------------------------------------------


class Tab:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.replies: dict[str, dict[str, Any]] = {}
        self.arrived = asyncio.Event()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame.get("type") == "reply":
                self.replies[frame["id"]] = frame
                self.arrived.set()

    async def command(self, cid: str, timeout: float = 10) -> dict[str, Any]:
        frame = {"type": "command", "component": "Echo", "command": "whoami", "args": {}, "id": cid}
        await self.ws.send(json.dumps(frame))
        async with asyncio.timeout(timeout):
            while cid not in self.replies:
                self.arrived.clear()
                await self.arrived.wait()
        return self.replies.pop(cid)


async def paced_round_trips(tab: Tab, seconds: float, tag: str) -> tuple[list[float], int]:
    times: list[float] = []
    failed = 0
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        started = time.perf_counter()
        reply = await tab.command(f"{tag}{i}")
        if reply.get("ok"):
            times.append((time.perf_counter() - started) * 1000)
        else:
            failed += 1
        await asyncio.sleep(max(0.0, PACE - (time.perf_counter() - started)))
    return times, failed


async def phase(web: Any, session: str, paths: list[str] | None, seconds: float, tag: str) -> dict[str, Any]:
    (opened,) = await open_all(web.url, [session], concurrency=1)
    assert opened is not None, "the victim's tab did not open"
    tab = Tab(opened[0])
    for i in range(200):  # the manager runs Echo
        if (await tab.command(f"{tag}ready{i}")).get("ok"):
            break
        await asyncio.sleep(0.1)
    before = sample(web.popen.pid)
    flood = None
    if paths:
        flood = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.webhook_flood", "--flood",
            str(web.port), str(FLOOD_RATE), str(seconds), *paths,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(1.0)  # measured while the flood is on
    times, failed = await paced_round_trips(tab, seconds - 2 if paths else seconds, tag)
    result: dict[str, Any] = {"round_trip_ms": summary(times), "failed_commands": failed}
    if flood is not None:
        out, _ = await flood.communicate()
        result["flood"] = json.loads(out.decode().strip().splitlines()[-1])
    result["daphne_cpu_percent"] = round(cpu_percent(before, sample(web.popen.pid)), 1)
    tab.task.cancel()
    await tab.ws.close()
    return result


async def measure(tmp: Any, template: Any, server: Any, quick: bool) -> dict[str, Any]:
    from alerts.models import AlertWebhook

    stack = new_stack(
        tmp,
        template,
        server,
        LIVESTREAM_COMPONENTS="ConsoleLogger,Echo",
        DJANGO_SETTINGS_MODULE="tests.settings",  # registers Echo
        LIVESTREAM_COMMAND_RATE="0",
        LIVESTREAM_FRAME_RATE="0",
        # Plain HTTP on loopback, as behind a TLS proxy: no redirect to https (a 301
        # would spare the view and measure nothing).
        SECURE_SSL_REDIRECT="0",
    )
    (victim_id, victim), (flooder_id, _), (stranger_id, _) = await amake_users(3)
    own = await asyncio.to_thread(lambda: AlertWebhook.for_user(int(flooder_id)).secret)
    paths = [f"/hooks/alerts/{stranger_id}/{secrets.token_urlsafe(32)}/" for _ in range(9)]
    paths.append(f"/hooks/alerts/{flooder_id}/{own}/")
    seconds = 8.0 if quick else 15.0
    try:
        await start_worker_ready(stack)
        results = {}
        unlimited = {"LIVESTREAM_ALERT_RATE_PER_IP": "0", "LIVESTREAM_ALERT_RATE_PER_USER": "0"}
        for name, env, flood in (
            ("baseline", {}, None),
            ("unlimited", unlimited, paths),
            ("limited", {}, paths),
        ):
            web = stack.start_daphne(name=f"daphne-{name}", **env)
            results[name] = await phase(web, victim, flood, seconds, name)
            await asyncio.to_thread(web.stop)
    finally:
        stack.stop_all()
        flushall(server)
    return {"phases": results, "flood_rate_target": FLOOD_RATE, "victim": victim_id}


def run(quick: bool) -> dict[str, Any]:
    with workdir("webhook_flood") as tmp, private_redis() as server:
        template = migrated_template(tmp)
        configure_django(unix_url(server), tmp / "db.sqlite3", new_prefix())
        r = asyncio.run(measure(tmp, template, server, quick))
    phases = r["phases"]
    limited = phases["limited"]["round_trip_ms"]
    met = limited["p99"] < 50 and phases["limited"]["failed_commands"] == 0

    def row(name: str) -> list[Any]:
        p = phases[name]
        rt, flood = p["round_trip_ms"], p.get("flood") or {}
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(flood.get("codes", {}).items())) or "-"
        return [
            name,
            rt["n"],
            *(f"{rt[k]:.1f}" for k in ("p50", "p90", "p99", "max")),
            p["failed_commands"],
            flood.get("rate", "-"),
            codes,
            f"{p['daphne_cpu_percent']}%",
            f"{flood['generator_cpu_percent']}%" if flood else "-",
        ]

    return {
        "title": "20. Webhook flood: another user's command round trip",
        "target": "another user's command p99 under 50 ms while the webhook gets ~120+ POSTs/s (issue 20)",
        "verdict": "met" if met else "NOT MET",
        "headline": f"flooded at {phases['limited']['flood']['rate']}/s: command p99 "
        f"{limited['p99']:.1f} ms with the limits (without: "
        f"{phases['unlimited']['round_trip_ms']['p99']:.1f} ms; no flood: "
        f"{phases['baseline']['round_trip_ms']['p99']:.1f} ms)",
        "tables": [
            {
                "title": "Victim's Echo.whoami round trip (ms, client-timed) and the flood",
                "columns": [
                    "phase",
                    "commands",
                    "p50",
                    "p90",
                    "p99",
                    "max",
                    "failed",
                    "flood/s",
                    "flood answers",
                    "daphne CPU",
                    "generator CPU",
                ],
                "rows": [row(name) for name in ("baseline", "unlimited", "limited")],
            }
        ],
        "notes": [
            "unlimited = the webhook's rate limits off (every POST runs Django), standing in for the code "
            "before issue 20.4; limited = the defaults (ALERT_RATE_PER_IP 20/s, burst 100; per user 2/s, "
            "burst 30).",
            "All processes share the machine's 2 cores with the client and the generator.",
        ],
        "data": r,
    }


if __name__ == "__main__":
    if "--flood" in sys.argv:
        flood_main(sys.argv[sys.argv.index("--flood") + 1 :])
    else:
        from benchmarks.runner import main_for

        main_for(run, sys.argv[1:])
