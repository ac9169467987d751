"""Issue 4.7: churn soak. Simulated users open and close dashboard tabs at random
across 2 daphne and 2 workers, while a checker compares, all along and at the
end, the managers the workers run (from their timestamped logs) with the users
that have a live connection (from the simulator's own record).

Invariants, at every checked moment t:
  * no user's manager runs twice (anywhere, ever: checked over whole intervals);
  * a user with a live tab for the last START_GRACE seconds has a manager;
  * a user whose manager runs had a live tab within the last CLEANUP + STOP_GRACE s.
At the end: the running managers (logs and Redis leases) are exactly the users
with open tabs, Redis presence counts each user's open tabs, and no process
logged a traceback or an ERROR.

`make test` runs SOAK_SECONDS=60 with 200 users. STREAMPAI_SOAK=1 adds a long
soak (STREAMPAI_SOAK_SECONDS, default 600; STREAMPAI_SOAK_USERS, default 400)
that also kills -9 and restarts a worker every 30 s.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field

import pytest
import websockets

from devtools.clients import Account, create_accounts, open_socket
from devtools.logs import RunTracker, log_problems, overlapping_runs, running_at
from devtools.processes import Proc, Stack
from livestream.ownership.leases import LeaseStore
from livestream.presence.store import PresenceStore

pytestmark = pytest.mark.processes

CLEANUP, HEARTBEAT = 2.0, 2.0
ENV = {
    "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
    "LIVESTREAM_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    "LIVESTREAM_PRESENCE_TTL": str(3 * HEARTBEAT),
    "LIVESTREAM_CONSOLE_LOG_INTERVAL": "5",  # 200 managers logging each second is only noise here
}
START_GRACE = 3.0  # a live user has a manager at most this long after its first tab opened
STOP_GRACE = 3.0  # ... and keeps it at most CLEANUP + this after its last tab closed
TAKEOVER_GRACE = 5.0  # the chaos soak: a killed worker's users are back within this
LAG = 1.5  # the checker looks this far back, so that every process has logged up to then
MAX_TABS = 3


@dataclass
class SimUser:
    account: Account
    tabs: list[tuple[float, websockets.ClientConnection]] = field(default_factory=list)
    # Union of the times this user had at least one open tab: [start, end or None].
    live: list[list[float | None]] = field(default_factory=list)
    # Handshakes, [sent, answered]: the server tracks (and may start the manager) before
    # the client sees the accept, or even when the client gives up on a slow one.
    handshakes: list[tuple[float, float]] = field(default_factory=list)

    def opened(self, t: float, ws: websockets.ClientConnection) -> None:
        if not self.tabs:
            self.live.append([t, None])
        self.tabs.append((t, ws))

    def closed(self, t: float) -> None:
        if not self.tabs:
            self.live[-1][1] = t

    def live_through(self, since: float, until: float) -> bool:
        """A tab was open during all of [since, until]."""
        return any(s <= since and (e is None or e >= until) for s, e in self.live)

    def live_within(self, since: float, until: float) -> bool:
        """A tab was open, or opening, at some moment of [since, until]."""
        return any(s <= until and (e is None or e >= since) for s, e in self.live) or any(
            s <= until and e >= since for s, e in self.handshakes
        )


class Soak:
    def __init__(self, stack: Stack, webs: list[Proc], workers: list[Proc], users: list[SimUser]) -> None:
        self.stack, self.webs, self.workers, self.users = stack, webs, workers, users
        self.tracker = RunTracker(workers)
        self.violations: list[str] = []
        self.checks = 0
        self.events = 0
        self.failed_opens = 0
        self.server_closed: list[str] = []
        self.readers: set[asyncio.Task[None]] = set()
        self.fault_windows: list[tuple[float, float]] = []  # [kill, kill + TAKEOVER_GRACE]

    async def churn_user(self, user: SimUser, until: float) -> None:
        rng = random.Random()
        while time.monotonic() < until:
            await asyncio.sleep(min(rng.uniform(0.5, 8.0), max(0.0, until - time.monotonic())))
            if time.monotonic() >= until:
                return
            opening = not user.tabs or (len(user.tabs) < MAX_TABS and rng.random() < 0.5)
            if opening:
                sent = time.time()
                try:
                    # ?live=1, as the dashboard page: the socket also gets its user's status pushes.
                    url, session = rng.choice(self.webs).url, user.account.session
                    ws = await open_socket(url, session, path="/ws/presence/?live=1")
                except (OSError, websockets.InvalidHandshake, TimeoutError):
                    user.handshakes.append((sent, time.time()))
                    self.failed_opens += 1
                    continue
                user.handshakes.append((sent, time.time()))
                user.opened(time.time(), ws)
                self.readers.add(asyncio.create_task(self.read(user, ws)))
            else:
                _, ws = user.tabs.pop(rng.randrange(len(user.tabs)))
                user.closed(time.time())  # counted from when the close starts
                await ws.close()
            self.events += 1

    async def read(self, user: SimUser, ws: websockets.ClientConnection) -> None:
        """Read what the server pushes, as a browser does (unread, the client's keepalive
        pings would stall and close the socket); a close we did not ask for is a failure."""
        try:
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass
        if any(tab is ws for _, tab in user.tabs):
            self.server_closed.append(f"user {user.account.user_id}: {ws.close_code} {ws.close_reason}")

    def check(self, t: float) -> None:
        """The invariants at moment ``t`` (in the past by LAG)."""
        runs = self.tracker.update()
        live = running_at(runs, t)
        in_fault = any(a <= t <= b for a, b in self.fault_windows)
        for user in self.users:
            uid = user.account.user_id
            managers = live.get(uid, [])
            if len(managers) > 1:
                self.violations.append(f"{t:.2f} user {uid} runs on {[r.worker for r in managers]}")
            if not managers and not in_fault and user.live_through(t - START_GRACE, t):
                self.violations.append(f"{t:.2f} user {uid} live for {START_GRACE}s has no manager")
            if managers and not user.live_within(t - CLEANUP - STOP_GRACE, t):
                self.violations.append(
                    f"{t:.2f} user {uid} has a manager {CLEANUP + STOP_GRACE}s after leaving"
                )
        self.checks += 1

    async def checker(self, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(1.0)
            self.check(time.time() - LAG)

    async def chaos(self, until: float, every: float = 30.0) -> None:
        """kill -9 a random worker every ``every`` seconds and start a new one at once."""
        n = len(self.workers)
        while time.monotonic() + every < until:
            await asyncio.sleep(every)
            victim = random.choice([w for w in self.workers if w.alive()])
            victim.kill()
            self.fault_windows.append((victim.ended_at, victim.ended_at + TAKEOVER_GRACE))
            n += 1
            self.workers.append(self.stack.start_worker(f"worker{n}"))

    async def run(self, seconds: float, chaos: bool = False) -> None:
        until = time.monotonic() + seconds
        tasks = [self.churn_user(user, until) for user in self.users]
        tasks.append(self.checker(until))
        if chaos:
            tasks.append(self.chaos(until))
        await asyncio.gather(*tasks)


async def run_soak(stack: Stack, seconds: float, n_users: int, chaos: bool) -> None:
    webs = [stack.start_daphne(f"daphne{i}") for i in (1, 2)]
    workers = [stack.start_worker(f"worker{i}") for i in (1, 2)]
    accounts = create_accounts(stack, [f"soak{i}@x.io" for i in range(n_users)])
    for proc in workers:
        await proc.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=30)
    users = [SimUser(a) for a in accounts.values()]
    soak = Soak(stack, webs, workers, users)
    started = time.monotonic()
    await soak.run(seconds, chaos=chaos)

    # Settle: no more churn. Past the grace, what runs is exactly who is here.
    await asyncio.sleep(CLEANUP + STOP_GRACE + LAG)
    end = time.time()
    for t in [end - 3, end - 2, end - 1, end - LAG]:
        soak.check(t)
    runs = soak.tracker.update()
    present = {u.account.user_id for u in users if u.tabs}
    running = running_at(runs, end - LAG)
    assert set(running) == present, (
        f"running without a tab: {sorted(set(running) - present)}; "
        f"tab without a manager: {sorted(present - set(running))}"
    )
    store, leases = PresenceStore(), LeaseStore("observer")
    mismatched = [
        (u.account.user_id, len(u.tabs), sessions)
        for u in users
        if (sessions := await store.sessions(u.account.user_id)) != len(u.tabs)
    ]
    assert not mismatched, f"(user, open tabs, sessions in Redis): {mismatched[:10]}"
    owners = {uid: await leases.owner(uid) for uid in present}
    assert all(owners.values()), [uid for uid, o in owners.items() if not o]

    assert not overlapping_runs(runs), overlapping_runs(runs)[:5]
    assert not soak.violations, f"{len(soak.violations)} violations, first: {soak.violations[:10]}"
    assert soak.failed_opens <= soak.events // 100, f"{soak.failed_opens} tabs failed to open"
    assert not soak.server_closed, f"tabs closed by the server: {soak.server_closed[:10]}"
    procs = [*webs, *soak.workers]
    assert all(p.alive() for p in procs if p.ended_at is None)
    problems = log_problems(procs)
    assert not problems, "\n".join(problems[:20])
    per_worker: dict[str, int] = {}
    for run in runs:
        per_worker[run.worker] = per_worker.get(run.worker, 0) + 1
    print(
        f"soak: {n_users} users, {soak.events} tab opens/closes in {time.monotonic() - started:.0f}s, "
        f"{len(runs)} manager runs {per_worker}, {soak.checks} checks, {len(present)} present at the end, "
        f"{soak.failed_opens} failed opens, 0 violations"
    )
    for user in users:
        for _, ws in user.tabs:
            await ws.close()


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=ENV)
    yield stack
    stack.stop_all()


@pytest.mark.long
async def test_churn_soak(stack):
    await run_soak(stack, seconds=60, n_users=200, chaos=False)


@pytest.mark.soak
@pytest.mark.timeout(0)
@pytest.mark.skipif(os.environ.get("STREAMPAI_SOAK") != "1", reason="long soak: set STREAMPAI_SOAK=1")
async def test_long_churn_soak_with_worker_kills(stack):
    seconds = float(os.environ.get("STREAMPAI_SOAK_SECONDS", "600"))
    users = int(os.environ.get("STREAMPAI_SOAK_USERS", "400"))
    await run_soak(stack, seconds=seconds, n_users=users, chaos=True)
