"""Connected platforms (issue 21): Twitch chat from the IRC server to the user's tabs.

Real daphne + one runworker, real WebSockets from this process, and an IRC server
that speaks Twitch's lines (tests/twitchlike.py: IRCv3 tags on every PRIVMSG) in this
process's event loop; each user's Twitch connection is a PlatformConnection row, as
``connect_platform`` makes it.

* latency: one message at a time from the server to the chat event on the tab (both
  clocks are this process's): p50 / p99 over LATENCY_N messages.
* a raid: RAID_RATE messages/s for RAID_SECONDS into one user's 5 tabs; every tab must
  get every message, in order; the user's ConsoleLogger tick lateness over the raid
  (the other components unaffected: p99 < 50 ms).
* cost: N users, one tab and one Twitch connection each. Their managers first run with
  the connections disabled (PlatformSupervisor with no child), then every connection is
  enabled (the worker is told per user, as a save on the page would); the worker's RSS
  and idle CPU difference / N is the cost of one connected chat. Every one of the N chats
  must be in its channel (the server counts the JOINs).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import (
    configure_django,
    cpu_percent,
    migrated_template,
    new_prefix,
    new_stack,
    open_all,
    quiet,
    sample,
    summary,
    wait_until,
    workdir,
)
from devtools.clients import amake_users
from devtools.logs import CONSOLE_LINE, utc_epoch
from devtools.processes import start_worker_ready
from devtools.redis import flushall, private_redis, unix_url

TOKEN = "bench-token"
LATENCY_P99 = 0.100
LATENESS_P99 = 0.050
USERS_TARGET = 2000


class ChatTab:
    """A tab that keeps (arrival time, text) of every PlatformSupervisor chat event."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.lines: list[tuple[float, str]] = []
        self.states: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if '"event":"chat"' in raw:
                    self.lines.append((time.monotonic(), json.loads(raw)["data"]["text"]))
                elif '"event":"platforms"' in raw:
                    self.states = json.loads(raw)["data"]["platforms"]
        except Exception:
            pass

    def connected(self) -> bool:
        return bool(self.states) and all(p["state"] == "connected" for p in self.states)


def connect(users: list[tuple[str, str]], enabled: bool) -> None:
    """A Twitch connection per user (channel ``u<id>``), as connect_platform writes it."""
    from django.db import connections, transaction

    from platforms.models import PlatformConnection

    with transaction.atomic():
        for user_id, _ in users:
            row = PlatformConnection(
                user_id=int(user_id), platform="twitch", channel=f"u{user_id}", enabled=enabled
            )
            row.access_token = TOKEN
            row.save()
    connections.close_all()


def enable_all(users: list[tuple[str, str]]) -> None:
    """Enable every connection (one UPDATE) and tell the worker per user, as a save does."""
    from django.db import connections

    from livestream.components import choices
    from platforms.models import PlatformConnection

    PlatformConnection.objects.filter(user_id__in=[int(u) for u, _ in users]).update(enabled=True)
    connections.close_all()
    for user_id, _ in users:
        choices.notify(user_id, "PlatformSupervisor")


def lateness(path: Path, user_id: str, start: int, end: int) -> list[float]:
    """Tick lateness (s) of ``user_id``'s console lines logged between two byte offsets."""
    data = path.read_bytes()
    first = None
    late = []
    for match in CONSOLE_LINE.finditer(data[:end].decode(errors="replace")):
        if match["uid"] != user_id:
            continue
        at = utc_epoch(match["ts"])
        if match["n"] == "1":
            first = at
        elif first is not None and match.start() >= len(data[:start].decode(errors="replace")):
            late.append(at - first - (int(match["n"]) - 1) * 1.0)
    return late


async def measure(tmp: Path, template: Path, server: Any, quick: bool) -> dict[str, Any]:
    from tests.twitchlike import TwitchLikeServer

    irc = await TwitchLikeServer.start(tokens={TOKEN})
    stack = new_stack(tmp, template, server, LIVESTREAM_TWITCH_IRC_URL=irc.url, LIVESTREAM_COMMAND_RATE="0")
    n_users = 200 if quick else USERS_TARGET
    raid_seconds, raid_rate = (5, 1000) if quick else (30, 1000)
    latency_n = 200 if quick else 500
    sockets: list[Any] = []
    try:
        users = await amake_users(1 + n_users)
        await asyncio.to_thread(connect, users[:1], True)
        await asyncio.to_thread(connect, users[1:], False)
        web = stack.start_daphne()
        worker = await start_worker_ready(stack)
        proc = psutil.Process(worker.popen.pid)

        # -- latency: one user, one tab
        uid, session = users[0]
        opened = await open_all(web.url, [session] * 5, concurrency=5)
        sockets += [o[0] for o in opened if o]
        tabs = [ChatTab(o[0]) for o in opened if o]
        await wait_until(lambda: all(t.connected() for t in tabs), 30, "the chat connected")
        await wait_until(lambda: f"u{uid}" in irc.in_channel(f"u{uid}"), 10, "joined")
        tab = tabs[0]
        delays = []
        for n in range(latency_n):
            before = len(tab.lines)
            sent = time.monotonic()
            irc.relay("viewer", f"#u{uid}", f"lat {n}")
            await wait_until(lambda b=before: len(tab.lines) > b, 5, "the line")
            delays.append(tab.lines[-1][0] - sent)
            await asyncio.sleep(0.02)

        # -- raid: RAID_RATE/s for RAID_SECONDS into the same user's 5 tabs
        for t in tabs:
            t.lines.clear()
        start_offset = worker.log.path.stat().st_size
        total = raid_rate * raid_seconds
        began = time.monotonic()
        sent_n = 0
        while sent_n < total:
            due = int((time.monotonic() - began) * raid_rate) + 1
            while sent_n < min(due, total):
                irc.relay("raider", f"#u{uid}", f"raid {sent_n}")
                sent_n += 1
            await asyncio.sleep(0.005)
        send_seconds = time.monotonic() - began
        await wait_until(
            lambda: all(len(t.lines) >= total for t in tabs), 120, "the raid delivered", required=False
        )
        drained = time.monotonic() - began
        await asyncio.sleep(1.5)
        end_offset = worker.log.path.stat().st_size
        late = lateness(worker.log.path, uid, start_offset, end_offset)
        expected = [f"raid {i}" for i in range(total)]
        raid = {
            "messages": total,
            "rate": raid_rate,
            "send_seconds": round(send_seconds, 2),
            "delivered_seconds": round(drained, 2),
            "tabs": len(tabs),
            "complete_in_order_tabs": sum(1 for t in tabs if [x for _, x in t.lines] == expected),
            "delivered_per_tab": [len(t.lines) for t in tabs],
            "console_lateness_s": summary(late) if late else {},
        }
        await asyncio.gather(*(t.ws.close() for t in tabs), return_exceptions=True)

        # -- cost of one connected chat, and N users with one chat each in one worker
        others = users[1:]
        opened = await open_all(web.url, [s for _, s in others], concurrency=50)
        sockets += [o[0] for o in opened if o]
        many = [ChatTab(o[0]) for o in opened if o]
        await wait_until(lambda: all(t.states for t in many), 240, "every manager's platforms state")
        await quiet(proc.pid, timeout=30)
        rss_off = proc.memory_info().rss
        a = sample(proc.pid)
        await asyncio.sleep(10)
        cpu_off = cpu_percent(a, sample(proc.pid))
        joins_before = irc.joins
        t0 = time.monotonic()
        await asyncio.to_thread(enable_all, others)
        all_in = await wait_until(
            lambda: irc.joins - joins_before >= len(others), 240, "every chat joined", required=False
        )
        connect_seconds = time.monotonic() - t0
        await wait_until(
            lambda: all(t.connected() for t in many), 60, "every tab shows connected", required=False
        )
        await quiet(proc.pid, timeout=30)
        rss_on = proc.memory_info().rss
        a = sample(proc.pid)
        await asyncio.sleep(10)
        cpu_on = cpu_percent(a, sample(proc.pid))
        cost = {
            "users": len(others),
            "tabs_open": len(many),
            "chats_joined": irc.joins - joins_before,
            "all_joined": bool(all_in),
            "tabs_showing_connected": sum(1 for t in many if t.connected()),
            "connect_all_seconds": round(connect_seconds, 1),
            "worker_rss_mb_chats_off": round(rss_off / 2**20, 1),
            "worker_rss_mb_chats_on": round(rss_on / 2**20, 1),
            "rss_kb_per_chat": round((rss_on - rss_off) / 1024 / max(1, len(others)), 1),
            "worker_idle_cpu_percent_off": round(cpu_off, 2),
            "worker_idle_cpu_percent_on": round(cpu_on, 2),
        }
        problems = worker.log.text().count(" ERROR ")
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        stack.stop_all()
        await irc.stop()
        flushall(server)
    return {"latency_s": summary(delays), "raid": raid, "cost": cost, "worker_errors": problems}


def run(quick: bool) -> dict[str, Any]:
    with workdir("platform_chat") as tmp, private_redis() as server:
        template = migrated_template(tmp)
        configure_django(unix_url(server), tmp / "db.sqlite3", new_prefix())
        r = asyncio.run(measure(tmp, template, server, quick))
    lat, raid, cost = r["latency_s"], r["raid"], r["cost"]
    late = raid["console_lateness_s"]
    ok = (
        lat["p99"] <= LATENCY_P99
        and raid["complete_in_order_tabs"] == raid["tabs"]
        and bool(late)
        and late["p99"] < LATENESS_P99
        and cost["all_joined"]
        and cost["users"] >= (200 if quick else USERS_TARGET)
    )
    return {
        "title": "Connected platforms: Twitch chat to the tabs",
        "target": f"IRC message -> tab p99 <= {LATENCY_P99 * 1000:.0f} ms; a raid of {raid['rate']:,}/s for "
        f"{raid['messages'] // raid['rate']} s into 5 tabs all delivered in order, ConsoleLogger lateness p99 < "
        f"{LATENESS_P99 * 1000:.0f} ms; >= {USERS_TARGET:,} users with one Twitch chat each in one worker",
        "verdict": "met" if ok else "NOT met",
        "headline": f"IRC -> tab p50 {lat['p50'] * 1000:.1f} ms, p99 {lat['p99'] * 1000:.1f} ms; raid "
        f"{raid['complete_in_order_tabs']}/{raid['tabs']} tabs complete and in order, console lateness p99 "
        f"{(late.get('p99') or 0) * 1000:.0f} ms; {cost['chats_joined']:,} chats in one worker, "
        f"{cost['rss_kb_per_chat']} KB RSS per chat",
        "tables": [
            {
                "title": "IRC message -> chat event on the tab (ms)",
                "columns": ["messages", "p50", "p90", "p99", "max"],
                "rows": [[lat["n"], *(f"{lat[k] * 1000:.2f}" for k in ("p50", "p90", "p99", "max"))]],
            },
            {
                "title": "Raid into one user's tabs",
                "columns": [
                    "messages",
                    "sent in (s)",
                    "all delivered after (s)",
                    "tabs complete+in order",
                    "console lateness p50 / p99 / max (ms)",
                ],
                "rows": [
                    [
                        raid["messages"],
                        raid["send_seconds"],
                        raid["delivered_seconds"],
                        f"{raid['complete_in_order_tabs']}/{raid['tabs']}",
                        " / ".join(f"{(late.get(k) or 0) * 1000:.1f}" for k in ("p50", "p99", "max")),
                    ]
                ],
            },
            {
                "title": "Users with one Twitch chat each, one worker",
                "columns": [
                    "users",
                    "chats joined",
                    "connect all (s)",
                    "RSS off -> on (MB)",
                    "RSS per chat (KB)",
                    "idle CPU off -> on (%)",
                ],
                "rows": [
                    [
                        cost["users"],
                        cost["chats_joined"],
                        cost["connect_all_seconds"],
                        f"{cost['worker_rss_mb_chats_off']} -> {cost['worker_rss_mb_chats_on']}",
                        cost["rss_kb_per_chat"],
                        f"{cost['worker_idle_cpu_percent_off']} -> {cost['worker_idle_cpu_percent_on']}",
                    ]
                ],
            },
        ],
        "notes": [
            "The IRC server (tests/twitchlike.py) and every tab run in the benchmark's own process, on the same "
            "2 cores as daphne, the worker and Redis.",
            "Cost: the same users' managers run first with their connection disabled, then enabled: the difference "
            "is the chat alone (the IRC client, its reader task, its state).",
        ],
        "data": r,
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
