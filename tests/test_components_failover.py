"""kill -9 the worker running a user's manager while a command of theirs is in flight:
StreamStateServer's live stream survives and resumes on the other worker, and the
command is answered with an error (timed out, or refused by the new owner), never
run twice."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from devtools.clients import create_accounts
from devtools.logs import log_problems
from devtools.processes import Stack, wait_until
from tests.tabs import Tab

pytestmark = pytest.mark.processes

COMPONENTS = "ConsoleLogger,StreamStateServer,Echo"


@pytest.fixture
def stack(tmp_path, migrated_db_template, key_prefix):
    stack = Stack(
        tmp_path,
        migrated_db_template,
        key_prefix,
        env={"LIVESTREAM_COMPONENTS": COMPONENTS, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    )
    yield stack
    stack.stop_all()


async def test_kill_the_owner_mid_command_state_survives_and_nothing_runs_twice(stack, redis_url, key_prefix):
    web = stack.start_daphne()
    workers = [stack.start_worker("worker1"), stack.start_worker("worker2")]
    for worker in workers:
        await worker.log.wait_for(r"worker \S+ started", 30)
    account = create_accounts(stack, ["failover@example.com"])["failover@example.com"]
    uid = account.user_id
    started = rf"\[PresenceManager\] UserStreamManager started: {uid}\n"
    tab = await Tab.open(web.url, account.session)
    owner = await wait_until(
        lambda: next((w for w in workers if w.log.findall(started)), None), 15, "a manager"
    )
    other = next(w for w in workers if w is not owner)
    await owner.log.wait_for(rf"\[UserStreamManager:{uid}\] Console log #1 ", 10)

    assert (await tab.command("StreamStateServer", "go_live"))["ok"]
    await tab.until(lambda: tab.stream_state() == "live", 10, "live")
    live_at = tab.named("StreamStateServer", "state")[-1]["live_at"]

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    runs = f"{key_prefix}:test:slow:{uid}"
    try:
        sent = time.monotonic()
        await tab.send({"type": "command", "component": "Echo", "command": "slow", "args": {}, "id": "slow1"})
        await wait_until(lambda: client.get(runs), 5, "the slow command running")
        owner.kill()  # SIGKILL, mid-command

        reply = await tab.reply("slow1", timeout=20)
        answered = time.monotonic() - sent
        assert reply["ok"] is False, reply
        assert reply["error"] in (
            "timed out",
            "this command was already received by a worker that stopped; not run again",
        ), reply
        assert 4.5 <= answered <= 12.5, answered  # one COMMAND_TIMEOUT (5 s), at most two

        await other.log.wait_for(started, 15)
        await other.log.wait_for(rf"\[UserStreamManager:{uid}\] StreamStateServer resumed live", 10)
        late = await Tab.open(web.url, account.session)
        await late.until(lambda: late.stream_state(), 10, "the sticky state")
        state = late.named("StreamStateServer", "state")[-1]
        assert state["state"] == "live" and state["live_at"] == live_at  # the same stream, not a new one

        # The new owner answers; the command in flight never ran a second time.
        assert (await late.command("StreamStateServer", "end_stream"))["ok"]
        await tab.until(lambda: tab.stream_state() == "offline", 10, "offline on the first tab too")
        assert await client.get(runs) == "1"
        if reply["error"] != "timed out":
            assert other.log.findall(rf"command Echo.slow of {uid}: already taken by another worker")
    finally:
        await client.aclose()
    assert log_problems([web, other]) == []
