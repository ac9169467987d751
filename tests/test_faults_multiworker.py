"""Issue 4.3: several `runworker presence-manager` processes over one Redis.

At every moment at most one manager runs per user across all workers (checked
over the whole run from the workers' timestamped logs), every present user has
one, managers spread across workers, a worker killed with -9 is replaced by the
others within 5 s and a worker stopped with SIGTERM hands over at once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest

from devtools.clients import create_accounts, open_socket
from devtools.logs import (
    RunTracker,
    log_problems,
    manager_runs,
    overlapping_runs,
    running_at,
    timed_lines,
    worker_id,
)
from devtools.processes import Proc, Stack
from livestream.ownership.leases import LeaseStore
from livestream.presence.store import PresenceStore

pytestmark = pytest.mark.processes

CLEANUP = 2.0
ENV = {
    "LIVESTREAM_PRESENCE_TTL": "3",
    "LIVESTREAM_HEARTBEAT_INTERVAL": "1",
    "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
}
USERS = 12


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=ENV)
    yield stack
    stack.stop_all()


async def wait_workers_up(workers: list[Proc], timeout: float = 20) -> None:
    for proc in workers:
        await proc.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=timeout)


async def wait_running(workers: list[Proc], user_ids: set[str], timeout: float) -> dict[str, str]:
    """Wait until exactly ``user_ids`` run (one manager each); user id -> worker name."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.time()
        live = running_at(manager_runs(workers), now)
        if set(live) == user_ids and all(len(runs) == 1 for runs in live.values()):
            return {uid: runs[0].worker for uid, runs in live.items()}
        if time.monotonic() > deadline:
            raise AssertionError(f"running {dict(live)} != expected {sorted(user_ids)}")
        await asyncio.sleep(0.05)


class Sampler:
    """Samples, every 0.1 s while the test runs, which workers run each user's manager.

    From the workers' timestamped logs. Records duplicates and, per user, the
    longest stretch without a manager once it first had one.
    """

    def __init__(self, workers: list[Proc], user_ids: set[str]) -> None:
        self.tracker = RunTracker(workers)
        self.user_ids = user_ids
        self.samples = 0
        self.duplicates: list[tuple[float, str, list[str]]] = []
        self.longest_gap: dict[str, float] = dict.fromkeys(user_ids, 0.0)
        self._gap_since: dict[str, float | None] = dict.fromkeys(user_ids)
        self._seen: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            now = time.time()
            live = running_at(self.tracker.update(), now)
            for uid in self.user_ids:
                runs = live.get(uid, [])
                if len(runs) > 1:
                    self.duplicates.append((now, uid, [r.worker for r in runs]))
                if runs:
                    self._seen.add(uid)
                    self._gap_since[uid] = None
                elif uid in self._seen:
                    since = self._gap_since[uid] = self._gap_since[uid] or now
                    self.longest_gap[uid] = max(self.longest_gap[uid], now - since)
            self.samples += 1
            await asyncio.sleep(0.1)

    def __enter__(self) -> Sampler:
        self.task = asyncio.create_task(self.run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


async def test_workers_share_users_and_take_over_from_killed_and_stopped_ones(stack):
    web = stack.start_daphne()
    workers = [stack.start_worker(f"worker{i}") for i in (1, 2, 3)]
    await wait_workers_up(workers)
    accounts = list(create_accounts(stack, [f"u{i}@x.io" for i in range(USERS)]).values())
    user_ids = {a.user_id for a in accounts}
    sampler = Sampler(workers, user_ids)
    with sampler:
        sockets = [await open_socket(web.url, a.session) for a in accounts]
        placement = await wait_running(workers, user_ids, timeout=10)
        spread = Counter(placement.values())
        print(f"spread over 3 workers: {dict(spread)}")
        assert len(spread) == 3, f"managers not spread across workers: {dict(spread)}"
        assert max(spread.values()) <= USERS // 2

        # kill -9: the victim's users run again on the two others within 5 s.
        victim, survivors = workers[0], workers[1:]
        orphaned = {uid for uid, w in placement.items() if w == victim.name}
        victim.kill()
        killed_at = time.monotonic()
        placement = await wait_running(workers, user_ids, timeout=10)
        takeover = time.monotonic() - killed_at
        assert takeover <= 5, f"killed worker's users back after {takeover:.2f}s"
        assert {placement[uid] for uid in orphaned} <= {w.name for w in survivors}
        assert len(set(placement.values())) == 2, f"takeover not shared: {placement}"

        # SIGTERM: the worker stops its managers cleanly, releases their leases and
        # the last worker takes them over at once (no lease expiry to wait for).
        leaving, last = survivors
        handed = {uid for uid, w in placement.items() if w == leaving.name}
        mark = last.log.mark()
        stopping_at = time.monotonic()
        assert await asyncio.to_thread(leaving.stop, 15) == 0
        for uid in handed:
            await last.log.wait_for(rf"UserStreamManager started: {uid}$", timeout=5, after=mark)
        handover = time.monotonic() - stopping_at
        for uid in handed:
            assert leaving.log.findall(rf"UserStreamManager stopped: {uid}$")
        assert leaving.log.findall(r"\[PresenceManager\] worker \S+ stopped")
        placement = await wait_running(workers, user_ids, timeout=5)
        assert set(placement.values()) == {last.name}
        leases = LeaseStore("observer")
        me = worker_id(last)
        assert {await leases.owner(uid) for uid in user_ids} == {me}
    assert handover < 2.5, f"SIGTERM handover took {handover:.2f}s"
    assert sampler.samples >= 5, sampler.samples
    assert not sampler.duplicates, sampler.duplicates[:5]
    # Nobody went without a manager longer than the kill -9 takeover bound.
    assert max(sampler.longest_gap.values()) <= 5, sampler.longest_gap
    assert not overlapping_runs(manager_runs(workers)), overlapping_runs(manager_runs(workers))
    assert not log_problems(workers), log_problems(workers)
    print(
        f"kill -9 of 1 of 3 workers: users back on the others after {takeover:.2f}s; "
        f"SIGTERM handover {handover:.2f}s"
    )
    for ws in sockets:
        await ws.close()


async def test_joins_and_leaves_of_one_user_on_different_workers(stack):
    """Every diff goes to whichever worker reads it first; the outcome must not depend on which."""
    web = stack.start_daphne()
    workers = [stack.start_worker(f"worker{i}") for i in (1, 2)]
    await wait_workers_up(workers)
    (user,) = create_accounts(stack, ["flappy@x.io"]).values()
    uid = user.user_id
    keep = await open_socket(web.url, user.session)
    await wait_running(workers, {uid}, timeout=10)
    # Tabs opening and closing while one stays open: the manager never stops.
    for _ in range(10):
        ws = await open_socket(web.url, user.session)
        await ws.close()
    # Close the last tab and come back within the cleanup window: still no stop.
    await keep.close()
    await asyncio.sleep(CLEANUP / 4)
    keep = await open_socket(web.url, user.session)
    joins = sum(len(w.log.findall(rf"presence join: {uid}$")) for w in workers)
    leaves = sum(len(w.log.findall(rf"presence leave: {uid} ")) for w in workers)
    deadline = time.monotonic() + 5
    while joins < 12 or leaves < 11:
        assert time.monotonic() < deadline, (joins, leaves)
        await asyncio.sleep(0.05)
        joins = sum(len(w.log.findall(rf"presence join: {uid}$")) for w in workers)
        leaves = sum(len(w.log.findall(rf"presence leave: {uid} ")) for w in workers)
    handled_by = {w.name for w in workers if w.log.findall(rf"presence (join|leave): {uid}")}
    assert handled_by == {"worker1", "worker2"}, "the diffs all landed on one worker"
    await asyncio.sleep(CLEANUP + 1)  # past any cleanup the last close scheduled
    runs = manager_runs(workers)
    assert len(runs) == 1 and runs[0].end is None, runs
    # The last tab closes: the manager stops after the cleanup timeout, whoever got the leave.
    await keep.close()
    closed_at = time.monotonic()
    await wait_running(workers, set(), timeout=CLEANUP + 3)
    stopped_after = time.monotonic() - closed_at
    assert CLEANUP - 0.2 <= stopped_after <= CLEANUP + 2
    assert await PresenceStore().sessions(uid) == 0
    assert await LeaseStore("observer").owner(uid) is None
    assert not log_problems(workers), log_problems(workers)


async def test_worker_lost_on_another_machine_is_replaced_when_its_leases_lapse(stack, aredis, key_prefix):
    """Without a pid to check (another machine), takeover waits for LEASE_TTL: still within 5 s."""
    web = stack.start_daphne()
    workers = [stack.start_worker(f"worker{i}") for i in (1, 2)]
    await wait_workers_up(workers)
    accounts = list(create_accounts(stack, [f"r{i}@x.io" for i in range(6)]).values())
    user_ids = {a.user_id for a in accounts}
    sockets = [await open_socket(web.url, a.session) for a in accounts]
    placement = await wait_running(workers, user_ids, timeout=10)
    victim, survivor = workers
    if victim.name not in placement.values():  # the joins all landed on worker2
        victim, survivor = survivor, victim
    # Freeze it (no more beats), make it unrecognisable as a local process, then kill it.
    victim.signal(signal.SIGSTOP)
    await aredis.hset(f"{key_prefix}:worker:{worker_id(victim)}", "proc", "")
    victim.kill()
    killed_at = time.monotonic()
    await wait_running(workers, user_ids, timeout=10)
    takeover = time.monotonic() - killed_at
    assert takeover <= 5, f"users of a worker lost elsewhere back after {takeover:.2f}s"
    assert not overlapping_runs(manager_runs(workers))
    assert not log_problems([survivor]), log_problems([survivor])
    print(f"worker lost on another machine: users back after {takeover:.2f}s")
    for ws in sockets:
        await ws.close()


async def test_frozen_worker_fences_itself_when_it_wakes_up(stack):
    """SIGSTOP past LEASE_TTL (a long GC pause, a paused VM): the other worker takes over and the
    frozen one, on waking, stops its managers before they do anything."""
    web = stack.start_daphne()
    workers = [stack.start_worker(f"worker{i}") for i in (1, 2)]
    await wait_workers_up(workers)
    accounts = list(create_accounts(stack, [f"f{i}@x.io" for i in range(6)]).values())
    user_ids = {a.user_id for a in accounts}
    sockets = [await open_socket(web.url, a.session) for a in accounts]
    placement = await wait_running(workers, user_ids, timeout=10)
    frozen, other = workers
    if frozen.name not in placement.values():
        frozen, other = other, frozen
    its_users = {uid for uid, w in placement.items() if w == frozen.name}
    frozen.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    mark = other.log.mark()
    for uid in its_users:
        await other.log.wait_for(rf"UserStreamManager started: {uid}$", timeout=8, after=mark)
    takeover = time.monotonic() - frozen_at
    woke_mark = frozen.log.mark()
    frozen.signal(signal.SIGCONT)
    woke_at = time.time()
    for uid in its_users:
        await frozen.log.wait_for(rf"UserStreamManager stopped: {uid}$", timeout=5, after=woke_mark)
    fenced = [t for t, line in timed_lines(frozen) if t >= woke_at - 0.01 and "stopped:" in line]
    fenced_after = max(fenced) - woke_at
    # Waking, each component may take at most the one step that was already due
    # (asyncio runs due timers in deadline order): one console line, not the
    # catch-up burst of every second it was frozen.
    woke_lines = Counter(
        m[1] for m in frozen.log.findall(r"\[UserStreamManager:(\d+)\] Console log", woke_mark)
    )
    assert all(woke_lines[uid] <= 1 for uid in its_users), woke_lines
    assert fenced_after < 0.5, f"fenced {fenced_after:.2f}s after waking"
    await wait_running(workers, user_ids, timeout=5)
    print(
        f"frozen worker: users taken over after {takeover:.2f}s; fenced {fenced_after * 1000:.0f} ms "
        f"after waking; console lines after waking: {dict(woke_lines)}"
    )
    for ws in sockets:
        await ws.close()
