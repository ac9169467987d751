"""Issue 4.2: kill -9 the worker, start it again.

Managers of present users run again within 3 s of the new worker's start,
cleanups that came due while no worker ran are carried out, and no user's
manager ever runs twice. Real daphne, runworker and redis-server processes.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from devtools.clients import create_accounts, open_socket
from devtools.logs import manager_runs, overlapping_runs, worker_id
from devtools.processes import Stack, wait_until
from livestream.ownership.leases import LeaseStore
from livestream.timers.store import TimerStore

pytestmark = pytest.mark.processes

CLEANUP = 2.0
ENV = {
    "LIVESTREAM_PRESENCE_TTL": "3",
    "LIVESTREAM_HEARTBEAT_INTERVAL": "1",
    "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
}
BACK_WITHIN = 3.0  # seconds from starting the new worker process


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=ENV)
    yield stack
    stack.stop_all()


async def wait_started(proc, user_ids, timeout: float, after: int = 0) -> None:
    for uid in user_ids:
        await proc.log.wait_for(rf"UserStreamManager started: {uid}$", timeout=timeout, after=after)


async def test_restarted_worker_resumes_present_users_and_runs_due_cleanups(stack):
    web = stack.start_daphne()
    first = stack.start_worker("worker1")
    emails = ["p1@x.io", "p2@x.io", "left@x.io", "leaves@x.io", "joins@x.io"]
    accounts = create_accounts(stack, emails)
    p1, p2, left, leaves, joins = (accounts[e] for e in emails)
    sockets = {a.email: await open_socket(web.url, a.session) for a in (p1, p2, left, leaves)}
    await wait_started(first, [p1.user_id, p2.user_id, left.user_id, leaves.user_id], timeout=10)

    # "left" closes its tab: a cleanup is pending when the worker dies.
    await sockets.pop(left.email).close()
    await first.log.wait_for(rf"cleanup scheduled: {left.user_id} in", timeout=5)
    first.kill()
    killed_at = time.monotonic()

    # While no worker runs: one user leaves, one arrives, the pending cleanup comes due.
    await sockets.pop(leaves.email).close()
    sockets[joins.email] = await open_socket(web.url, joins.session)
    timers = TimerStore()

    async def cleanup_overdue() -> bool:
        return (await timers.pending()).get(f"cleanup:{left.user_id}", 1) <= 0

    await wait_until(cleanup_overdue, timeout=CLEANUP + 2, message="the cleanup to come due", interval=0.05)

    second = stack.start_worker("worker2")
    started_at = time.monotonic()
    present = [p1.user_id, p2.user_id, joins.user_id]
    await wait_started(second, present, timeout=BACK_WITHIN + 5)
    back_after = time.monotonic() - started_at
    assert back_after <= BACK_WITHIN, f"managers back {back_after:.2f}s after the worker started"

    # The overdue cleanup ran (its timer is gone), the absent users got no manager,
    # and the leave that arrived while no worker ran was acted on.
    await second.log.wait_for(rf"presence leave: {leaves.user_id} \(0 sessions left\)", timeout=5)
    await second.log.wait_for(rf"cleanup scheduled: {leaves.user_id} in", timeout=5)
    assert f"cleanup:{left.user_id}" not in await timers.pending()
    me = worker_id(second)
    leases = LeaseStore("observer")
    assert {uid: await leases.owner(uid) for uid in present} == dict.fromkeys(present, me)
    # Past every grace: cleanup timeout and the dead worker's leases.
    await asyncio.sleep(CLEANUP + 1)
    assert await leases.owner(left.user_id) is None
    assert await leases.owner(leaves.user_id) is None
    for absent in (left, leaves):
        assert not second.log.findall(rf"UserStreamManager started: {absent.user_id}$")
    runs = manager_runs([first, second])
    assert not overlapping_runs(runs)
    assert sorted(r.user_id for r in runs if r.worker == "worker2") == sorted(present)
    print(
        f"kill -9 worker, restart {started_at - killed_at:.1f}s later: "
        f"managers back {back_after:.2f}s after the new worker started"
    )
    for ws in sockets.values():
        await ws.close()


async def test_worker_restarted_at_once_takes_over_when_the_dead_leases_lapse(stack):
    web = stack.start_daphne()
    first = stack.start_worker("worker1")
    accounts = create_accounts(stack, ["u1@x.io", "u2@x.io", "u3@x.io"])
    sockets = [await open_socket(web.url, a.session) for a in accounts.values()]
    user_ids = [a.user_id for a in accounts.values()]
    await wait_started(first, user_ids, timeout=10)
    first.kill()
    second = stack.start_worker("worker2")
    started_at = time.monotonic()
    await wait_started(second, user_ids, timeout=BACK_WITHIN + 5)
    back_after = time.monotonic() - started_at
    assert back_after <= BACK_WITHIN, f"managers back {back_after:.2f}s after the worker started"
    assert not overlapping_runs(manager_runs([first, second]))
    print(f"kill -9 worker, immediate restart: managers back {back_after:.2f}s after start")
    for ws in sockets:
        await ws.close()
