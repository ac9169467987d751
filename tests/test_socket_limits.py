"""Issue 9: one user's frame flood does not slow another user's socket (real daphne).

A separate process floods its socket with frames as fast as it can (sync
``websockets`` client); meanwhile this process measures another user's
``{"type": "ping"}`` -> pong round trip. The flooder's excess frames are dropped
and counted, with one log line per socket per minute, and daphne stops reading
the flooding socket for a moment each time it goes over FRAME_RATE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time

import pytest
import websockets

from devtools.clients import create_accounts, open_socket, ping
from devtools.processes import BASE_DIR, Stack
from livestream.presence.store import PresenceStore

pytestmark = pytest.mark.processes

FLOOD_SECONDS = 6.0
PINGS = 40
RTT_BOUND = 0.100

_FLOODER = """
import sys, time
from websockets.sync.client import connect
url, session, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
ws = connect(url, additional_headers={"Origin": url.replace("ws", "http", 1).split("/ws/")[0],
                                      "Cookie": "sessionid=" + session})
print("open", flush=True)
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(100):
        ws.send('{"type": "ping"}')
    sent += 100
print(sent, flush=True)
ws.close()
"""


async def round_trips(ws, n: int) -> list[float]:
    out = []
    for _ in range(n):
        began = time.monotonic()
        await ping(ws)
        out.append(time.monotonic() - began)
        await asyncio.sleep(0.1)
    return out


@pytest.mark.cpu_heavy
async def test_a_frame_flood_does_not_slow_another_users_pings(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        web = stack.start_daphne()
        accounts = create_accounts(stack, ["flood@x.io", "calm@x.io"])
        flood, calm = accounts["flood@x.io"], accounts["calm@x.io"]
        victim = await open_socket(web.url, calm.session)
        quiet = await round_trips(victim, 10)

        url = web.url.replace("http", "ws", 1) + "/ws/presence/"
        flooder = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _FLOODER,
            url,
            flood.session,
            str(FLOOD_SECONDS),
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
        )
        assert (await asyncio.wait_for(flooder.stdout.readline(), 10)).strip() == b"open"
        await asyncio.sleep(0.5)  # the flood is on
        during = await round_trips(victim, PINGS)
        sent = int((await asyncio.wait_for(flooder.stdout.readline(), FLOOD_SECONDS + 20)).strip() or 0)
        await asyncio.wait_for(flooder.wait(), 20)

        await web.log.wait_for(r"sends frames faster than", timeout=5)
        lines = web.log.findall(rf"user {flood.user_id} sends frames faster than [\d.]+/s: (\d+) dropped")
        print(
            f"frame flood: {sent} frames sent in {FLOOD_SECONDS}s; other user's ping RTT quiet "
            f"max {max(quiet) * 1000:.1f} ms, during the flood median "
            f"{sorted(during)[len(during) // 2] * 1000:.1f} ms, max {max(during) * 1000:.1f} ms; "
            f"{len(lines)} log line(s) for the flooder"
        )
        assert max(during) <= RTT_BOUND, json.dumps([round(x * 1000, 1) for x in during])
        assert len(lines) == 1  # one line per socket per minute, not one per frame
        assert victim.close_code is None
        assert "Traceback" not in web.log.text()
        await victim.close()
    finally:
        stack.stop_all()


@pytest.mark.cpu_heavy
async def test_a_handshake_storm_is_accepted_or_refused_quickly_and_cleanly(
    tmp_path, migrated_db_template, key_prefix
):
    """Issue 8 item 6: 300 handshakes at once from one IP over HANDSHAKE_RATE, plus 100
    clients that give up in the middle of their handshake. Each handshake is accepted
    or refused (403) within seconds; presence holds exactly the accepted sockets; and
    daphne never has to kill a consumer (it would after application_close_timeout, 10 s)."""
    stack = Stack(
        tmp_path,
        migrated_db_template,
        key_prefix,
        env={"LIVESTREAM_HANDSHAKE_RATE": "20", "LIVESTREAM_HANDSHAKE_BURST": "100"},
    )
    try:
        web = stack.start_daphne()
        accounts = list(create_accounts(stack, [f"storm{i}@x.io" for i in range(20)]).values())
        accepted, refused, times = [], 0, []

        async def one(i: int):
            nonlocal refused
            began = time.monotonic()
            try:
                ws = await open_socket(web.url, accounts[i % len(accounts)].session, open_timeout=20)
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 403
                refused += 1
            else:
                accepted.append(ws)
            times.append(time.monotonic() - began)

        async def give_up(i: int):
            with contextlib.suppress(TimeoutError, OSError, websockets.WebSocketException):
                async with asyncio.timeout(0.005 * (i % 10)):
                    ws = await open_socket(web.url, accounts[i % len(accounts)].session)
                    await ws.close()

        await asyncio.gather(*(one(i) for i in range(300)), *(give_up(i) for i in range(100)))
        store = PresenceStore()
        present = sum([await store.sessions(a.user_id) for a in accounts])
        print(
            f"handshake storm: {len(accepted)} accepted, {refused} refused (403), slowest answer "
            f"{max(times):.2f}s; {present} present"
        )
        assert len(accepted) + refused == 300
        assert 100 <= len(accepted) < 300 and refused > 0
        assert max(times) < 5.0
        await asyncio.gather(*(ws.close() for ws in accepted))
        deadline = time.monotonic() + 5
        while sum([await store.sessions(a.user_id) for a in accounts]) > 0:
            assert time.monotonic() < deadline, "closed sockets still present"
            await asyncio.sleep(0.05)
        await asyncio.sleep(11.5)  # past application_close_timeout: a stuck consumer would be killed
        log = web.log.text()
        assert "took too long to shut down" not in log
        assert "Exception inside application" not in log
        assert len(web.log.findall(r"over HANDSHAKE_RATE")) == 1  # one line per IP per minute
    finally:
        stack.stop_all()
