"""A nemesis and a history checker (issue 19): ``make nemesis SEED=1 MINUTES=2``.

Real processes: Redis as production runs it, a primary, a replica and three sentinels
(devtools/sentinel.py), each data server behind a TCP proxy (devtools/tcpproxy.py) that it
announces, so the sentinels, the replication link and the app all go through the proxies;
two daphnes, two workers. Simulated users open and close tabs, send commands and webhook
alerts, while a schedule drawn from SEED injects one fault at a time: kill -9 or
SIGSTOP/SIGCONT of a worker or a daphne; a restart of the master with or without its data
(faster than the sentinels' down-after: no failover, and the replica resyncs from it);
a Sentinel failover (the master killed; promoted elsewhere; the old one back later as a
replica) and a switchover (SENTINEL FAILOVER); delay, a blackhole (longer than
down-after: the sentinels fail over too) or a reset between every process and Redis.

The processes record a history (STREAMPAI_HISTORY_DIR, livestream/ownership/history.py:
each manager run and each effect with its token); the nemesis records its faults and
the alerts the webhook accepted. The checker reads them and verifies:

  * no two runs of one user have overlapping effects (an older token's effect never
    after a newer one's);
  * after each fault heals, every user with an open tab has a running manager within
    LEASE_TTL + 5 s; after the last tab closed, none within CLEANUP + PRESENCE_TTL + 5 s;
  * every accepted alert is delivered exactly once, or reported lost with its reason;
  * no process died but the nemesis' victims; no traceback in any log.

The schedule is a function of SEED alone (``schedule(seed, minutes)``): a failing seed
can be run again, and kept as a test case (tests/test_nemesis.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis.exceptions import RedisError

from devtools.clients import Account, create_accounts, open_socket
from devtools.processes import Proc, Stack, migrate_template
from devtools.sentinel import SERVICE, SentinelSetup
from livestream.components.base import Component
from livestream.ownership import history

LEASE_TTL, CLEANUP, PRESENCE_TTL, HEARTBEAT = 3.0, 2.0, 3.0, 1.0
# The default components and a Ticker (below), registered by devtools/nemesis_settings.py.
COMPONENTS = "ConsoleLogger,StreamStateServer,AlertManager,Ticker"
ENV = {
    "DJANGO_SETTINGS_MODULE": "devtools.nemesis_settings",
    "LIVESTREAM_COMPONENTS": COMPONENTS,
    "LIVESTREAM_PRESENCE_TTL": str(PRESENCE_TTL),
    "LIVESTREAM_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
    "LIVESTREAM_LEASE_TTL": str(LEASE_TTL),
    "LIVESTREAM_ALERT_DISPLAY_INTERVAL": "0.2",
}
USERS = 8
KINDS = {  # fault kind -> weight
    "kill9-worker": 3,
    "sigstop-worker": 3,
    "kill9-daphne": 1,
    "sigstop-daphne": 1,
    "redis-restart": 1,
    "redis-restart-data-loss": 1,
    "sentinel-failover": 2,
    "sentinel-switchover": 2,
    "delay": 2,
    "blackhole": 2,
    "reset": 1,
}


class Ticker(Component):
    """A steady stream of effects for the checker: every 0.2 s one outside Redis (a history
    line, only while may_act(), as a relay or a chat connection would act) and one in
    Redis (a fenced event)."""

    async def run(self) -> None:
        n = 0
        while True:
            n += 1
            began = time.time()
            if self.may_act():
                history.record(
                    "effect", what="Ticker:external", user=self.user_id, token=self.token, t0=began
                )
            with contextlib.suppress(RedisError, OSError):  # Redis away: the next tick tries again
                await self.emit("tick", {"n": n})
            await asyncio.sleep(0.2)


@dataclass(frozen=True)
class Fault:
    kind: str
    target: int  # which worker / daphne (0 or 1)
    duration: float  # how long before it heals (seconds)
    gap: float  # quiet time before it (seconds)


def schedule(seed: int, minutes: float) -> list[Fault]:
    """The faults of a run, from ``seed`` alone."""
    rng = random.Random(seed)
    faults, total = [], 0.0
    kinds, weights = list(KINDS), list(KINDS.values())
    while total < minutes * 60:
        kind = rng.choices(kinds, weights)[0]
        duration = rng.uniform(0.5, 2.0) if kind == "delay" else rng.uniform(1.0, 2 * LEASE_TTL)
        fault = Fault(kind, rng.randrange(2), round(duration, 2), round(rng.uniform(3.0, 8.0), 2))
        faults.append(fault)
        total += fault.gap + fault.duration + LEASE_TTL + 5
    return faults


# -- the system under test ---------------------------------------------------------


def master(setup: SentinelSetup) -> Any:
    """The data server the sentinels call master now (the primary if they do not agree)."""
    return setup.by_public_port(setup.master_port()) or setup.primary


def restart_master(setup: SentinelSetup, lose_data: bool) -> None:
    """Restart the master at once (well within down-after: no failover), with or without its data."""
    server = master(setup)
    if lose_data:
        server.kill()
        for path in (setup.directory / server.name).glob("appendonly*"):
            if path.is_dir():
                for part in path.iterdir():
                    part.unlink()
                path.rmdir()
            else:
                path.unlink()
    else:
        server.stop()  # writes what it has
    server.restart()


@dataclass
class Tab:
    ws: Any
    reader: asyncio.Task[None]


@dataclass
class Run:
    """One nemesis run: the processes, the users and what the nemesis recorded."""

    directory: Path
    seed: int
    stack: Stack
    redis: SentinelSetup
    workers: list[Proc]
    daphnes: list[Proc]
    accounts: list[Account] = field(default_factory=list)
    webhooks: dict[str, str] = field(default_factory=dict)
    tabs: dict[str, list[Tab]] = field(default_factory=lambda: defaultdict(list))
    accepted: dict[str, tuple[str, float]] = field(default_factory=dict)  # alert id -> (user, when)
    victims: list[Proc] = field(default_factory=list)  # processes the nemesis killed
    faults: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    paused: bool = False

    @property
    def history_dir(self) -> Path:
        return self.directory / "history"

    def live_daphnes(self) -> list[Proc]:
        return [d for d in self.daphnes if d.alive()]


async def start(directory: Path, seed: int) -> Run:
    """The stack, its users and their webhook URLs (``directory`` exists, with history/)."""
    redis_setup = await asyncio.to_thread(SentinelSetup(directory / "redis", proxied=True).start)
    env = {
        **ENV,
        "REDIS_URL": redis_setup.url(),
        "STREAMPAI_HISTORY_DIR": str(directory / "history"),
    }
    template = migrate_template(directory)
    stack = Stack(directory, template, f"nemesis{seed}", env=env)
    daphnes = [stack.start_daphne(f"daphne{i}") for i in (0, 1)]
    workers = [stack.start_worker(f"worker{i}") for i in (0, 1)]
    for proc in workers:
        await proc.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=60)
    run = Run(directory, seed, stack, redis_setup, workers, daphnes)
    run.accounts = list(create_accounts(stack, [f"n{i}@nemesis.io" for i in range(USERS)]).values())
    for account in run.accounts:
        cookies = {"sessionid": account.session}
        async with httpx.AsyncClient(base_url=daphnes[0].url, timeout=30, cookies=cookies) as client:
            page = await client.get("/dashboard/stream/")
            match = re.search(r'<code id="alert-webhook-url">([^<]+)</code>', page.text)
            assert match, page.text[:500]
            run.webhooks[account.user_id] = match[1]
    return run


def stop(run: Run) -> None:
    run.stack.stop_all()
    run.redis.stop()


# -- users ------------------------------------------------------------------------


async def _read(ws: Any) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


async def open_tab(run: Run, account: Account, rng: random.Random) -> None:
    daphnes = run.live_daphnes()
    if not daphnes:
        return
    daphne = rng.choice(daphnes)
    try:
        ws = await asyncio.wait_for(open_socket(daphne.url, account.session), 5)
    except Exception:
        return  # a daphne frozen or dying: the user tries again later
    run.tabs[account.user_id].append(Tab(ws, asyncio.create_task(_read(ws))))


async def close_tab(run: Run, user_id: str) -> None:
    tabs = run.tabs[user_id]
    if tabs:
        tab = tabs.pop(0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(tab.ws.close(), 2)
        tab.reader.cancel()


def prune(run: Run) -> None:
    """Tabs whose socket closed (their daphne died) are gone; their user reconnects later."""
    for user_id, tabs in run.tabs.items():
        run.tabs[user_id] = [t for t in tabs if not t.reader.done()]


async def users(run: Run, rng: random.Random, stop_at: float) -> None:
    """Random user actions until ``stop_at`` (paused while a recovery is measured)."""
    client = httpx.AsyncClient(timeout=5)
    n = 0
    try:
        while time.monotonic() < stop_at:
            await asyncio.sleep(0.3)
            if run.paused:
                continue
            prune(run)
            account = rng.choice(run.accounts)
            uid = account.user_id
            action = rng.choices(["open", "close", "command", "alert"], [3, 2, 2, 3])[0]
            if action == "open" and len(run.tabs[uid]) < 2:
                await open_tab(run, account, rng)
            elif action == "close":
                await close_tab(run, uid)
            elif action == "command" and run.tabs[uid]:
                n += 1
                frame = {
                    "type": "command",
                    "component": "StreamStateServer",
                    "command": rng.choice(["go_live", "end_stream"]),
                    "args": {},
                    "id": f"c{n}",
                }
                with contextlib.suppress(Exception):
                    await run.tabs[uid][0].ws.send(json.dumps(frame))
            elif action == "alert":
                n += 1
                body = {"kind": "donation", "from": f"fan {n}", "amount": 1 + n % 9, "message": "gg"}
                daphne = run.live_daphnes()
                if not daphne:
                    continue
                url = run.webhooks[uid].replace(run.daphnes[0].url, rng.choice(daphne).url)
                with contextlib.suppress(Exception):
                    answer = await client.post(url, json=body)
                    if answer.status_code == 202:
                        run.accepted[answer.json()["id"]] = (uid, time.time())
    finally:
        await client.aclose()


# -- faults -----------------------------------------------------------------------


async def inject(run: Run, fault: Fault) -> None:
    """Inject ``fault``, wait its duration, heal it."""
    kind = fault.kind
    if kind.endswith("-worker") or kind.endswith("-daphne"):
        group = run.workers if kind.endswith("-worker") else run.daphnes
        victim = group[fault.target]
        if kind.startswith("kill9"):
            victim.kill()
            run.victims.append(victim)
            await asyncio.sleep(fault.duration)
            if victim in run.workers:
                fresh = run.stack.start_worker(f"{victim.name}.{len(run.victims)}")
                await fresh.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=60)
            else:
                fresh = await asyncio.to_thread(
                    run.stack.start_daphne, f"{victim.name}.{len(run.victims)}", victim.port
                )
            group[fault.target] = fresh
        else:
            victim.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(fault.duration)
            finally:
                victim.signal(signal.SIGCONT)
    elif kind.startswith("redis-restart"):
        await asyncio.to_thread(restart_master, run.redis, kind.endswith("data-loss"))
        await asyncio.sleep(fault.duration)
    elif kind == "sentinel-failover":
        old = master(run.redis)
        old.kill()
        await asyncio.sleep(fault.duration)
        old.restart()  # with its data; the sentinels make it a replica of the new master
    elif kind == "sentinel-switchover":
        await asyncio.to_thread(_switchover, run.redis)
        await asyncio.sleep(fault.duration)
    elif kind == "delay":
        for proxy in run.redis.proxies:
            proxy.delay = fault.duration / 10  # up to 0.2 s each way
        await asyncio.sleep(fault.duration * 3)
        for proxy in run.redis.proxies:
            proxy.delay = 0.0
    elif kind == "blackhole":
        for proxy in run.redis.proxies:
            proxy.set_blackhole(True)
        await asyncio.sleep(fault.duration)
        for proxy in run.redis.proxies:
            proxy.set_blackhole(False)
    elif kind == "reset":
        for proxy in run.redis.proxies:
            proxy.cut()
        await asyncio.sleep(fault.duration)


def _switchover(setup: SentinelSetup) -> None:
    """SENTINEL FAILOVER on the first sentinel that accepts it (one may be busy with another)."""
    import redis

    for sentinel in setup.sentinels:
        try:
            sentinel.client().execute_command("SENTINEL", "FAILOVER", SERVICE)
            return
        except redis.RedisError:
            continue


def current_runs(run: Run) -> dict[str, int]:
    """User -> pid of the live process whose manager of the user runs now (by the history)."""
    alive = {p.popen.pid for p in run.workers if p.alive()}
    last: dict[str, dict[str, Any]] = {}
    for entry in history.read(str(run.history_dir)):
        if entry["kind"] == "run" and entry["pid"] in alive:
            if entry["event"] == "start":
                last[entry["user"]] = entry
            elif last.get(entry["user"], {}).get("pid") == entry["pid"]:
                del last[entry["user"]]
    return {user: entry["pid"] for user, entry in last.items()}


async def wait_converged(run: Run, within: float) -> float | None:
    """Until every user with an open tab runs, and with no tab open anywhere, nobody
    (seconds it took), or None. (A tab that just closed leaves its manager running for
    CLEANUP_TIMEOUT, so the first is checked after every fault, the second at the end.)"""
    started = time.monotonic()
    while time.monotonic() - started < within:
        prune(run)
        wanted = {uid for uid, tabs in run.tabs.items() if tabs}
        running = set(current_runs(run))
        if wanted <= running and (wanted or not running):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return None


async def nemesis(run: Run, faults: list[Fault], stop_at: float) -> None:
    for fault in faults:
        if time.monotonic() + fault.gap > stop_at:
            break
        await asyncio.sleep(fault.gap)
        at = time.time()
        if fault.kind == "redis-restart-data-loss":  # known before it happens: alerts queued are lost
            run.faults.append({"kind": "data-loss-marker", "at": at})
        await inject(run, fault)
        run.paused = True  # the users hold still while recovery is measured
        took = await wait_converged(run, LEASE_TTL + 5)
        run.paused = False
        healed = time.time() - (took or 0.0)
        run.faults.append({"kind": fault.kind, "at": at, "healed": healed, "recovered_in": took})
        if took is None:
            wanted = sorted(uid for uid, tabs in run.tabs.items() if tabs)
            run.problems.append(
                f"after {fault.kind} (healed {time.time() - at:.1f}s after it began): users with a tab "
                f"{wanted} vs running {sorted(current_runs(run))} not equal within LEASE_TTL + 5 s"
            )


# -- the checker --------------------------------------------------------------------


def overlapping_effects(entries: list[dict[str, Any]]) -> list[str]:
    """An effect of an older token that surely came after an effect of a newer token of the
    same user (``t0``/``t``: before and after the write) means two runs overlapped."""
    problems = []
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry["kind"] == "effect" and entry.get("token") is not None:
            by_user[entry["user"]].append(entry)
    for user, effects in by_user.items():
        newest_start: dict[int, float] = {}  # token -> the earliest moment one of its effects ended
        for e in effects:
            newest_start[e["token"]] = min(newest_start.get(e["token"], e["t"]), e["t"])
        for e in effects:
            newer = [t for t, first in newest_start.items() if t > e["token"] and first < e.get("t0", e["t"])]
            if newer:
                problems.append(
                    f"user {user}: an effect of token {e['token']} ({e['what']}) at {e.get('t0', e['t']):.3f} "
                    f"after token {min(newer)} had acted"
                )
    return problems


def check_alerts(run: Run, entries: list[dict[str, Any]]) -> tuple[int, int, list[str]]:
    """Every accepted alert delivered once, or lost with a reason: the AlertManager's line
    ("... not sent again"), the webhook's ("queued without a replica's acknowledgement: a
    failover now would lose it"), or a Redis restart without its data after it was accepted."""
    delivered = Counter(
        e["id"]
        for e in entries
        if e["kind"] == "effect" and e["what"] == "AlertManager:alert" and e.get("id")
    )
    logs = "\n".join(p.log.text() for p in run.stack.procs)
    losses = [f["at"] for f in run.faults if f["kind"] == "data-loss-marker"]
    problems, lost = [], 0
    for alert_id, (user, accepted_at) in run.accepted.items():
        n = delivered.get(alert_id, 0)
        if n > 1:
            problems.append(f"alert {alert_id} delivered {n} times")
        elif n == 0:
            reason = re.search(
                rf"alert {re.escape(alert_id)} [^\n]*(not sent again|a failover now would lose it)", logs
            )
            if reason or any(at > accepted_at for at in losses):
                lost += 1
            else:
                problems.append(f"alert {alert_id} of user {user} neither delivered nor reported lost")
    return sum(1 for a in run.accepted if delivered.get(a)), lost, problems


async def finish(run: Run) -> dict[str, Any]:
    """Heal everything, check liveness both ways, the alerts, the processes and the logs."""
    for proxy in run.redis.proxies:
        proxy.delay = 0.0
        proxy.set_blackhole(False)
    for server in run.redis.servers:
        if not server.alive():
            server.restart()
    for proc in run.stack.procs:
        proc.signal(signal.SIGCONT)
    # Every user opens a tab: each must run, and their alerts drain.
    prune(run)
    rng = random.Random(run.seed + 2)
    for account in run.accounts:
        if not run.tabs[account.user_id]:
            await open_tab(run, account, rng)
    if await wait_converged(run, LEASE_TTL + 5) is None:
        run.problems.append(f"with every tab open, running: {sorted(current_runs(run))}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        entries = history.read(str(run.history_dir))
        _, _, alert_problems = check_alerts(run, entries)
        if not alert_problems:
            break
        await asyncio.sleep(0.5)
    for account in run.accounts:
        while run.tabs[account.user_id]:
            await close_tab(run, account.user_id)
    if await wait_converged(run, CLEANUP + PRESENCE_TTL + 5) is None:
        run.problems.append(f"no tab open, still running: {sorted(current_runs(run))}")
    entries = history.read(str(run.history_dir))
    run.problems += overlapping_effects(entries)
    delivered, lost, alert_problems = check_alerts(run, entries)
    run.problems += alert_problems
    for proc in run.stack.procs:
        if proc not in run.victims and not proc.alive():
            run.problems.append(f"{proc.name} died (not a victim)")
        tracebacks = proc.log.text().count("Traceback")
        if tracebacks:
            run.problems.append(f"{proc.name}: {tracebacks} traceback(s) in its log")
    kinds = Counter(f["kind"] for f in run.faults if f["kind"] != "data-loss-marker")
    recovery: dict[str, Any] = {}
    for kind in kinds:
        done = [f for f in run.faults if f["kind"] == kind and f["recovered_in"] is not None]
        after_heal = sorted(f["recovered_in"] for f in done)
        after_fault = sorted(f["healed"] - f["at"] + f["recovered_in"] for f in done)
        if done:
            recovery[kind] = {
                "after_heal_p99": round(after_heal[min(len(done) - 1, int(len(done) * 0.99))], 2),
                "after_fault_began_p99": round(after_fault[min(len(done) - 1, int(len(done) * 0.99))], 2),
                "after_fault_began_median": round(statistics.median(after_fault), 2),
            }
    return {
        "seed": run.seed,
        "faults": dict(kinds),
        "recovery_s": recovery,
        "runs": sum(1 for e in entries if e["kind"] == "run" and e["event"] == "start"),
        "effects": sum(1 for e in entries if e["kind"] == "effect"),
        "alerts_accepted": len(run.accepted),
        "alerts_delivered": delivered,
        "alerts_lost_with_reason": lost,
        "problems": run.problems,
    }


async def main(seed: int, minutes: float, directory: Path) -> dict[str, Any]:
    faults = schedule(seed, minutes)
    (directory / "history").mkdir(parents=True, exist_ok=True)
    run = await start(directory, seed)
    try:
        stop_at = time.monotonic() + minutes * 60
        rng = random.Random(seed + 1)
        await asyncio.gather(users(run, rng, stop_at), nemesis(run, faults, stop_at))
        report = await finish(run)
    finally:
        stop(run)
    await asyncio.to_thread((directory / "report.json").write_text, json.dumps(report, indent=2))
    return report


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--dir", type=Path, default=None, help="where logs, history and report.json go")
    options = parser.parse_args()
    directory = options.dir or Path(tempfile.mkdtemp(prefix=f"nemesis-{options.seed}-"))
    report = asyncio.run(main(options.seed, options.minutes, directory))
    print(json.dumps(report, indent=2))
    print(f"logs, history and report: {directory}")
    sys.exit(1 if report["problems"] else 0)


if __name__ == "__main__":
    cli()
