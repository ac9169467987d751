"""Idle is not an error: a dashboard socket and the worker left alone for a minute stay up.

NOTES.md: redis-py 8's default socket_timeout (5 s) makes channels-redis's
blocking receive raise TimeoutError every ~5 s unless configured; ours sets it
explicitly (streampai/redisconf.py). This test fails without that setting.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from devtools.clients import login, open_socket, signup
from devtools.processes import Stack, wait_until

pytestmark = pytest.mark.processes

IDLE_SECONDS = 62


@pytest.mark.long
async def test_socket_and_worker_stay_up_for_a_minute_idle(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(tmp_path, migrated_db_template, key_prefix)
    try:
        web = stack.start_daphne()
        worker = stack.start_worker()
        await signup(web.url, "idle@example.com", "a-long-pass-123")
        session = await login(web.url, "idle@example.com", "a-long-pass-123")
        ws = await open_socket(web.url, session)
        uid = (await worker.log.wait_for(r"UserStreamManager started: (\d+)", timeout=15)).group(1)
        idle_from = time.monotonic()
        # The page sends nothing for a minute; like a browser it keeps reading what
        # the server pushes (live status), so transport flow control stays open.
        received: list[str] = []
        reader = asyncio.create_task(_read_into(ws, received))
        await asyncio.sleep(IDLE_SECONDS)  # the idleness itself is what is under test
        assert time.monotonic() - idle_from >= IDLE_SECONDS
        assert not reader.done(), reader.exception()
        mark = len(received)
        await ws.send(json.dumps({"type": "ping"}))
        await wait_until(lambda: any('"pong"' in m for m in received[mark:]), 5, "pong")
        reader.cancel()
        assert worker.alive() and web.alive()
        counts = [
            int(m.group(1)) for m in worker.log.findall(rf"\[UserStreamManager:{uid}\] Console log #(\d+)")
        ]
        assert counts[-1] >= IDLE_SECONDS - 2
        for proc in (web, worker):
            text = proc.log.text()
            for bad in ("Traceback", "TimeoutError", "Exception", "ERROR", "WARNING"):
                assert bad not in text, f"{bad} in {proc.name} log:\n{text[-3000:]}"
        assert len(worker.log.findall(r"UserStreamManager started")) == 1
        await ws.close()
    finally:
        stack.stop_all()


async def _read_into(ws, received: list[str]) -> None:
    async for message in ws:
        received.append(message)
