"""Issue 4.1: a daphne killed with -9 never disconnects its sockets; heartbeats expire them.

Real processes: two daphne, one runworker, the suite's private redis-server.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from devtools.clients import closed_with, create_accounts, open_socket
from devtools.logs import manager_runs, overlapping_runs
from devtools.processes import Stack
from livestream.presence.store import PresenceStore

pytestmark = pytest.mark.processes

TTL, HEARTBEAT, CLEANUP = 3.0, 1.0, 2.0
GRACE = 2.0  # HANDOFF_GRACE
ENV = {
    "LIVESTREAM_PRESENCE_TTL": str(TTL),
    "LIVESTREAM_HEARTBEAT_INTERVAL": str(HEARTBEAT),
    "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
}


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=ENV)
    yield stack
    stack.stop_all()


async def test_kill_9_daphne_expires_its_connections_and_stops_only_its_users(stack):
    d1, d2 = stack.start_daphne("daphne1"), stack.start_daphne("daphne2")
    worker = stack.start_worker()
    accounts = create_accounts(stack, ["a@x.io", "b@x.io", "c@x.io", "both@x.io"])
    a, b, c, both = (accounts[e] for e in ["a@x.io", "b@x.io", "c@x.io", "both@x.io"])
    sockets = [
        await open_socket(d1.url, a.session),
        await open_socket(d1.url, b.session),
        await open_socket(d2.url, c.session),
        await open_socket(d1.url, both.session),
        await open_socket(d2.url, both.session),
    ]
    for account in (a, b, c, both):
        await worker.log.wait_for(rf"UserStreamManager started: {account.user_id}$", timeout=10)
    mark = worker.log.mark()

    d1.kill()
    killed_at = time.monotonic()
    bound = TTL + CLEANUP + 2
    for account in (a, b):
        await worker.log.wait_for(
            rf"UserStreamManager stopped: {account.user_id}$", timeout=bound + 5, after=mark
        )
        elapsed = time.monotonic() - killed_at
        assert elapsed <= bound, (
            f"{account.email}'s manager stopped {elapsed:.2f}s after kill -9 (> {bound}s)"
        )
    stopped_after = time.monotonic() - killed_at
    # The sweeper expired the dead daphne's connections as leaves (both's d1 tab included) ...
    for account in (a, b, both):
        await worker.log.wait_for(rf"expired connection \w+ of {account.user_id}$", timeout=1, after=mark)
    # ... and a cleanup wrongly scheduled for "both" would fire CLEANUP after that leave.
    await worker.log.wait_for(rf"presence leave: {both.user_id} \(1 sessions left\)", timeout=1, after=mark)
    # Absence can only be shown by waiting past the moment it would have happened.
    await asyncio.sleep(CLEANUP + 1.5)
    assert not worker.log.findall(rf"UserStreamManager stopped: ({c.user_id}|{both.user_id})$", mark)
    for account in (c, both):
        after = worker.log.mark()
        await worker.log.wait_for(rf"\[UserStreamManager:{account.user_id}\] Console log", 3, after=after)
    store = PresenceStore()
    assert await store.sessions(both.user_id) == 1
    assert await store.sessions(c.user_id) == 1
    assert await store.user_ids() == {c.user_id, both.user_id}
    assert not overlapping_runs(manager_runs([worker]))
    assert worker.alive() and d2.alive()
    print(f"kill -9 daphne: its users' managers stopped {stopped_after:.2f}s later (bound {bound}s)")
    for ws in sockets[2:]:
        await ws.close()


async def test_sigterm_daphne_hands_its_connections_off(stack):
    """A graceful daphne stop (a deploy) untracks its sockets at once, with the hand-off delay.

    daphne 4.2.3's own cancel of the consumers fails whenever a connection less
    than about a second old is in its table (as here: SIGTERM right after the
    handshake); dashboard/daphne/shutdown.py's trigger does it regardless. The socket is
    closed with 1012 (service restart) and, as this tab never reconnects, its
    user's manager stops CLEANUP_TIMEOUT + HANDOFF_GRACE after the leave.
    """
    web = stack.start_daphne(LIVESTREAM_HANDOFF_GRACE=str(GRACE))
    worker = stack.start_worker(LIVESTREAM_HANDOFF_GRACE=str(GRACE))
    (user,) = create_accounts(stack, ["graceful@x.io"]).values()
    ws = await open_socket(web.url, user.session)
    await worker.log.wait_for(rf"UserStreamManager started: {user.user_id}$", timeout=10)
    stopping_at = time.monotonic()
    web.signal(signal.SIGTERM)
    code = await closed_with(ws, timeout=10)
    closed_after = time.monotonic() - stopping_at
    assert code == 1012, code
    await worker.log.wait_for(rf"presence leave: {user.user_id} \(0 sessions left\)", timeout=TTL)
    left_after = time.monotonic() - stopping_at
    await worker.log.wait_for(rf"UserStreamManager stopped: {user.user_id}$", timeout=CLEANUP + GRACE + 3)
    stopped_after = time.monotonic() - stopping_at
    assert await asyncio.to_thread(web.popen.wait, 15) == 0
    assert "shutting down: handing off 1 open sockets" in web.log.text()
    assert "took too long to shut down" not in web.log.text()
    assert await PresenceStore().sessions(user.user_id) == 0
    assert left_after < 1.5, f"leave {left_after:.2f}s after SIGTERM"
    assert closed_after < 1.5, f"closed {closed_after:.2f}s after SIGTERM"
    bound = CLEANUP + GRACE
    assert bound - 0.3 <= stopped_after <= bound + 1.5, f"stopped {stopped_after:.2f}s after SIGTERM"
    print(
        f"SIGTERM daphne: closed (1012) after {closed_after:.2f}s, left after {left_after:.2f}s, "
        f"manager stopped after {stopped_after:.2f}s (cleanup {CLEANUP} + grace {GRACE})"
    )
