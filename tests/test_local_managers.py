"""livestream/worker/local_managers.py in-process, against the real Redis: a user's next
manager on a worker starts only once their last one there has stopped.

The 2-minute nemesis run of 2026-12-07 found it: a Sentinel failover fenced a worker;
one user's component was stuck in a Redis call and took SHUTDOWN_TIMEOUT to end; the
renewal came back meanwhile and the worker started that user's next manager beside
the old one, whose "stopped" line then came after the new one's "started"."""

from __future__ import annotations

import time
import uuid

import pytest

from devtools.processes import wait_until
from livestream.worker.presence_manager import PresenceManager
from tests.components import Stuck

# The manager reads the user's choice of components (none: COMPONENTS) from the database.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def stuck_worker(configure_livestream):
    # SHUTDOWN_TIMEOUT longer than Stuck.STUCK_FOR: the stop waits it out.
    configure_livestream(COMPONENTS=["Stuck"], SHUTDOWN_TIMEOUT=5.0)
    Stuck.running = Stuck.most = 0
    return PresenceManager()


def runs(pm: PresenceManager, user_id: str) -> bool:
    """A manager of ``user_id`` is here and its Stuck is running."""
    manager = pm.local.managers.get(user_id)
    return manager is not None and manager.component("Stuck") is not None


def manager_lines(caplog: pytest.LogCaptureFixture, user_id: str) -> list[str]:
    return [
        r.getMessage().removeprefix("[PresenceManager] UserStreamManager ")
        for r in caplog.records
        if r.getMessage().endswith(f": {user_id}") and "UserStreamManager st" in r.getMessage()
    ]


async def present(pm: PresenceManager, user_id: str) -> None:
    meta = {"email": "x@y.z", "joined_at": int(time.time()), "ref": uuid.uuid4().hex}
    assert await pm.store.track(user_id, meta) is not None


async def test_a_fenced_user_resumes_only_once_their_fenced_manager_has_stopped(stuck_worker, caplog):
    pm, user = stuck_worker, "41"
    await present(pm, user)
    pm.local.start(user)
    await wait_until(lambda: runs(pm, user), 5, "Stuck running")

    pm.local.fence(last_renewal=time.monotonic() - 60)  # no renewal for a minute: fence now
    assert user not in pm.local.managers
    await pm.local._resume([user])  # the renewal is back while the fenced manager is stuck
    await wait_until(lambda: runs(pm, user), 5, "resumed")
    try:
        assert Stuck.most == 1, "two managers of one user ran at once"
        assert manager_lines(caplog, user) == [f"started: {user}", f"stopped: {user}", f"started: {user}"]
    finally:
        await pm.local.stop(user, release=False)


async def test_a_join_while_the_last_manager_stops_starts_the_next_one_after_it(stuck_worker, caplog):
    pm, user = stuck_worker, "42"
    pm.local.start(user)
    await wait_until(lambda: runs(pm, user), 5, "Stuck running")

    pm.local.stop_soon(user, "lost")  # its lease was taken; then given back to us by a join
    await pm.local.start_many([user, user], time.monotonic())
    assert user not in pm.local.managers  # not beside the one still stopping
    await wait_until(lambda: runs(pm, user), 5, "started after")
    try:
        assert Stuck.most == 1, "two managers of one user ran at once"
        assert manager_lines(caplog, user) == [f"started: {user}", f"stopped: {user}", f"started: {user}"]
        assert not pm.local.stopping(user)
    finally:
        await pm.local.stop(user, release=False)


async def test_another_users_start_does_not_wait_for_a_stuck_stop(stuck_worker):
    pm = stuck_worker
    pm.local.start("43")
    await wait_until(lambda: runs(pm, "43"), 5, "Stuck running")
    pm.local.stop_soon("43", "lost")
    await pm.local.start_many(["44"], time.monotonic())
    try:
        assert "44" in pm.local.managers and pm.local.stopping("43")
    finally:
        await pm.local.all_stopped()
        await pm.local.stop("44", release=False)
    assert not pm.local.stopping("43")
