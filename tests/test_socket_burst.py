"""Issue 8 item 7: one user's 2,000 sockets opening and closing in bursts leave nothing behind.

The original bug: one user's 2,000 sockets closing within 3 s left 43 closed
connections present for 16 minutes (untracks that timed out were dropped),
daphne's Redis connections went 40 -> 2,232 and never came back, RSS 86 -> 274 MB,
and ~2,000 "took too long to shut down and was killed" lines per burst.

Real daphne + runworker; the client is this test process: one asyncio loop with
raw ``websockets`` connections (light enough not to be the bottleneck). Three
rounds: open SOCKETS sockets of one user, close them all within 3 s; each time
presence is empty and the manager stopped within CLEANUP_TIMEOUT (+ bound),
daphne's Redis connections (CLIENT LIST, by the ``dashboard:<pid>:`` names its
connections carry) and RSS are back under their bounds, and daphne never had to
kill a consumer.
"""

from __future__ import annotations

import asyncio
import os
import time

import psutil
import pytest

from devtools.clients import create_accounts, open_socket
from devtools.processes import Stack
from livestream.presence.store import PresenceStore

pytestmark = pytest.mark.processes

SOCKETS = int(os.environ.get("STREAMPAI_BURST_SOCKETS", "2000"))
ROUNDS = 3
CLEANUP = 1.0
ENV = {
    "LIVESTREAM_CLEANUP_TIMEOUT": str(CLEANUP),
    "LIVESTREAM_MAX_SOCKETS_PER_USER": str(SOCKETS + 10),
    "LIVESTREAM_HANDSHAKE_RATE": "0",  # all of it comes from 127.0.0.1
}
# Redis connections a daphne's dashboard keeps, however many sockets: the hub's
# pub/sub connection and the tracker's (one per concurrent batch loop: track,
# untrack, heartbeat).
MAX_REDIS_CONNECTIONS = 5
# RSS growth allowed from after the first burst to after the last (MB): what a leak
# of per-socket state (2,000 sockets a round) would exceed.
RSS_GROWTH_MB = 25


async def daphne_redis_connections(aredis, pid: int) -> int:
    clients = await aredis.client_list()
    return sum(1 for c in clients if c.get("name", "").startswith(f"dashboard:{pid}:"))


@pytest.mark.cpu_heavy
async def test_three_bursts_of_2000_sockets_leave_no_ghost_and_no_leak(
    tmp_path, migrated_db_template, key_prefix, aredis
):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=ENV)
    try:
        web = stack.start_daphne()
        worker = stack.start_worker()
        (user,) = create_accounts(stack, ["burst@x.io"]).values()
        daphne = psutil.Process(web.popen.pid)
        store = PresenceStore()
        rss_after: list[float] = []
        print(f"daphne at start: RSS {daphne.memory_info().rss / 2**20:.0f} MB, {daphne.num_fds()} fds")
        results = []
        for round_no in range(1, ROUNDS + 1):
            gate = asyncio.Semaphore(100)
            handshake_times: list[float] = []
            failures: list[str] = []

            async def one(gate=gate, handshake_times=handshake_times, failures=failures):
                async with gate:
                    began = time.monotonic()
                    try:
                        ws = await open_socket(web.url, user.session, open_timeout=30)
                    except Exception as exc:
                        failures.append(repr(exc)[:100])
                        return None
                    handshake_times.append(time.monotonic() - began)
                    return ws

            opening = time.monotonic()
            sockets = [ws for ws in await asyncio.gather(*(one() for _ in range(SOCKETS))) if ws]
            open_s = time.monotonic() - opening
            assert not failures, failures[:5]
            # Tracked before accepted: every completed handshake is present.
            assert await store.sessions(user.user_id) == SOCKETS
            if round_no == 1:
                await worker.log.wait_for(rf"UserStreamManager started: {user.user_id}$", timeout=10)
            mark = worker.log.mark()

            closing = time.monotonic()
            await asyncio.gather(*(ws.close() for ws in sockets))
            closed_at = time.monotonic()
            close_s = closed_at - closing
            assert close_s <= 3.0, f"closing took {close_s:.2f}s"

            deadline = closed_at + 5
            while (left := await store.sessions(user.user_id)) > 0:
                assert time.monotonic() < deadline, f"{left} closed sockets still present"
                await asyncio.sleep(0.02)
            empty_s = time.monotonic() - closed_at
            await worker.log.wait_for(
                rf"UserStreamManager stopped: {user.user_id}$", timeout=CLEANUP + 5, after=mark
            )
            stopped_s = time.monotonic() - closed_at
            assert stopped_s <= CLEANUP + 1.5, f"manager stopped {stopped_s:.2f}s after the last close"
            await asyncio.sleep(1.5)  # daphne reaps its closed connections every second
            connections = await daphne_redis_connections(aredis, daphne.pid)
            rss = daphne.memory_info().rss / 2**20
            rss_after.append(rss)
            fds = daphne.num_fds()
            results.append(
                f"round {round_no}: opened {len(sockets)} in {open_s:.1f}s "
                f"({len(sockets) / open_s:.0f}/s, handshake max {max(handshake_times):.2f}s), "
                f"closed in {close_s:.2f}s, presence empty {empty_s:.2f}s and manager stopped "
                f"{stopped_s:.2f}s after; daphne: {connections} Redis connections, RSS {rss:.0f} MB, {fds} fds"
            )
            print(results[-1])
            assert connections <= MAX_REDIS_CONNECTIONS, connections
            assert fds < 100, fds  # the sockets' file descriptors are gone too
            assert await store.user_ids() == set()
            if round_no < ROUNDS:  # the next round opens a fresh manager
                await asyncio.sleep(0.2)
        assert rss_after[-1] - rss_after[0] <= RSS_GROWTH_MB, rss_after
        log = web.log.text()
        assert "took too long to shut down" not in log
        assert "Exception inside application" not in log
        assert "Traceback" not in log
    finally:
        stack.stop_all()
