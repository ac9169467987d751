"""Alerts end to end with real processes: webhook POSTs to daphne, delivery by the
AlertManager of whichever worker holds the user's lease, frames on a real WebSocket.

Two workers; alerts are queued while the user has no tab (no manager anywhere), a tab
opens, and the worker delivering them is killed with -9 part way: the other worker
takes the user over and every alert reaches the tab exactly once, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from typing import Any

import httpx
import pytest

from devtools.clients import create_accounts, open_socket
from devtools.logs import log_problems
from devtools.processes import Proc, Stack, wait_until

pytestmark = pytest.mark.processes

DISPLAY = 0.5
ENV = {
    "LIVESTREAM_ALERT_DISPLAY_INTERVAL": str(DISPLAY),
    "LIVESTREAM_PRESENCE_TTL": "3",
    "LIVESTREAM_HEARTBEAT_INTERVAL": "1",
}
ALERTS = 8


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=ENV)
    yield stack
    stack.stop_all()


async def webhook_url(base_url: str, session: str) -> str:
    """The URL the Stream page shows the signed-in user (creates the webhook)."""
    async with httpx.AsyncClient(base_url=base_url, cookies={"sessionid": session}, timeout=30) as client:
        page = await client.get("/dashboard/stream/")
    match = re.search(r'<code id="alert-webhook-url">([^<]+)</code>', page.text)
    assert match, page.text[:2000]
    return match[1]


async def alert_frames(ws: Any, into: list[tuple[float, dict[str, Any]]]) -> None:
    """Read the socket for good, keeping every AlertManager alert frame with its arrival time."""
    async for raw in ws:
        frame = json.loads(raw)
        if frame.get("type") == "event" and frame.get("component") == "AlertManager":
            assert frame["event"] == "alert"
            into.append((time.monotonic(), frame["data"]))


def owner_of(workers: list[Proc], user_id: str) -> Proc | None:
    started = [w for w in workers if f"UserStreamManager started: {user_id}" in w.log.text()]
    return started[-1] if len(started) == 1 else None


async def test_alerts_queued_before_the_tab_survive_a_kill_9_of_their_worker_exactly_once(stack):
    web = stack.start_daphne()
    workers = [stack.start_worker("worker-a"), stack.start_worker("worker-b")]
    for proc in workers:
        await proc.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=30)
    account = create_accounts(stack, ["alerts@example.com"])["alerts@example.com"]
    url = await webhook_url(web.url, account.session)

    # Queued while no manager runs anywhere: kept in Redis.
    ids = []
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(ALERTS):
            body = {"kind": "donation", "from": f"donor {i}", "amount": i + 1, "message": f"#{i}"}
            response = await client.post(url, json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        assert (await client.get(url)).status_code == 405
        assert (await client.post(url.replace(url.split("/")[-2], "x" * 43), json=body)).status_code == 404

    received: list[tuple[float, dict[str, Any]]] = []
    ws = await open_socket(web.url, account.session, path="/ws/presence/?live=1")
    reader = asyncio.create_task(alert_frames(ws, received))
    try:
        owner = await wait_until(lambda: owner_of(workers, account.user_id), 15, "a manager")
        await wait_until(lambda: len(received) >= 3, 15, "the first alerts")
        owner.kill()  # between two alerts: in the display wait
        killed_at = time.monotonic()
        survivor = next(w for w in workers if w is not owner)
        await survivor.log.wait_for(rf"UserStreamManager started: {account.user_id}$", timeout=15)
        await wait_until(lambda: len(received) >= ALERTS, 20, f"{ALERTS} alerts")
        # Nothing more comes: no alert twice (a bounded quiet period).
        await asyncio.sleep(DISPLAY * 3)
        assert len(received) == ALERTS
        # An idle manager is woken at once: webhook POST -> frame on the tab.
        async with httpx.AsyncClient(timeout=10) as client:
            posted_at = time.monotonic()
            response = await client.post(url, json={"kind": "follow", "from": "late"})
        await wait_until(lambda: len(received) > ALERTS, 5, "the late alert")
        latency = received[-1][0] - posted_at
        assert received[-1][1]["id"] == response.json()["id"]
        assert latency < 1.0, latency
    finally:
        reader.cancel()
        await ws.close()

    got = [data["id"] for _, data in received[:ALERTS]]
    assert got == ids, f"received {got}, queued {ids}"
    assert [data["from"] for _, data in received[:ALERTS]] == [f"donor {i}" for i in range(ALERTS)]
    before = [t for t, _ in received[:ALERTS] if t < killed_at]
    after = [t for t, _ in received[:ALERTS] if t > killed_at]
    assert len(before) >= 3 and after, (len(before), len(after))
    # Taken over within the lease + a tick (plus start-up), then paced again.
    assert after[0] - killed_at < 6.0, after[0] - killed_at
    gaps = [b - a for a, b in itertools.pairwise(after)]
    assert all(DISPLAY * 0.9 <= gap < DISPLAY + 1.0 for gap in gaps), gaps
    print(
        f"\nfailover: first alert {after[0] - killed_at:.2f}s after the kill; gaps {[round(g, 3) for g in gaps]}; "
        f"POST -> tab on an idle manager {latency * 1000:.0f} ms"
    )
    assert not log_problems([survivor, web])
