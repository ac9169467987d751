"""CloudflareBackend against the Cloudflare Stream contract server (devtools/cloudflare_api.py).

The official SDK makes real HTTP calls to a local server that implements the documented
endpoints, envelope and errors, and refuses requests Cloudflare would refuse (a wrong
field name, a missing streamKey, a wrong token): nothing of our client is patched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured

from broadcast import inputs
from broadcast.backends.base import FAILED, LIVE, OFF, STARTING, OutputSpec
from broadcast.backends.cloudflare import (
    RATE_LIMITED,
    REFUSED_TOKEN,
    UNREACHABLE,
    CloudflareBackend,
    CloudflareError,
)
from broadcast.models import StreamIngest
from devtools.cloudflare_api import FakeCloudflare
from devtools.processes import wait_until
from livestream import conf as livestream_conf
from streampai import secrets

pytestmark = pytest.mark.django_db(transaction=True)

WEBHOOK_SECRET = "whsec-test-0123456789abcdef"


@pytest.fixture
def api() -> Iterator[FakeCloudflare]:
    server = FakeCloudflare().serve()
    yield server
    server.close()


@pytest.fixture
async def backend(api: FakeCloudflare, configure_livestream: Any) -> AsyncIterator[CloudflareBackend]:
    configure_livestream(
        BROADCAST_BACKEND="cloudflare",
        CLOUDFLARE_ACCOUNT_ID=api.account_id,
        CLOUDFLARE_API_TOKEN=api.token,
        CLOUDFLARE_API_BASE_URL=api.base_url,
        CLOUDFLARE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        CLOUDFLARE_POLL_INTERVAL=0.2,
    )
    backend = CloudflareBackend()
    yield backend
    await backend.aclose()


@database_sync_to_async
def make_user(name: str = "streamer") -> str:
    return str(get_user_model().objects.create_user(name, f"{name}@example.com").pk)


@database_sync_to_async
def stored(user_id: str) -> StreamIngest:
    return StreamIngest.objects.get(user_id=int(user_id), backend="cloudflare")


class Reports:
    """What run_output reported, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, state: str, error: str | None) -> None:
        self.seen.append((state, error))

    @property
    def state(self) -> str | None:
        return self.seen[-1][0] if self.seen else None

    def errors(self) -> list[str | None]:
        return [error for state, error in self.seen if state == FAILED]


def spec(n: int = 1) -> OutputSpec:
    return OutputSpec(
        id=str(n), name=f"out {n}", url=f"rtmp://127.0.0.1:19{n:02d}/live", key=f"dest-key-{n}", enabled=True
    )


async def test_ingest_creates_one_live_input_and_stores_its_key_encrypted(api, backend):
    user = await make_user()
    first = await backend.ingest(user)
    again = await backend.ingest(user)
    assert first == again
    [created] = api.calls("POST")
    # The documented body: camelCase fields the API knows (the server 400s anything else).
    assert created.body == {
        "meta": {"name": f"streampai user {user}", "streampai_user": user},
        "recording": {"mode": "off"},
    }
    [uid] = api.inputs
    assert first.server_url == api.inputs[uid]["rtmps"]["url"]
    assert first.stream_key == api.inputs[uid]["rtmps"]["streamKey"]
    row = await stored(user)
    assert row.remote_id == uid and row.server_url == first.server_url
    assert (
        first.stream_key not in row.key_encrypted and secrets.decrypt(row.key_encrypted) == first.stream_key
    )


async def test_stored_ingest_reads_the_database_only(api, backend):
    """What every manager start reads: no API call, nothing created."""
    user = await make_user()
    assert await backend.stored_ingest(user) is None
    assert await backend.stored_ingest("w17") is None  # a presence id that names no account
    assert not api.calls()
    made = await backend.ingest(user)
    calls = len(api.calls())
    assert await backend.stored_ingest(user) == made
    assert len(api.calls()) == calls


async def test_a_deleted_input_is_recreated(api, backend):
    user = await make_user()
    old = await backend.ingest(user)
    [old_uid] = api.inputs
    api.drop_input(old_uid)  # deleted in the Cloudflare dashboard
    new = await backend.ingest(user)
    [new_uid] = api.inputs
    assert new_uid != old_uid and new.stream_key != old.stream_key
    assert (await stored(user)).remote_id == new_uid
    assert [r.status for r in api.calls("GET", old_uid)] == [404]


async def test_input_connected_reads_the_input_status(api, backend, configure_livestream):
    configure_livestream(CLOUDFLARE_POLL_INTERVAL=0.001)  # every call asks Cloudflare
    user = await make_user()
    await backend.ingest(user)
    [uid] = api.inputs
    assert await backend.input_connected(user) is False  # status null: never connected
    api.set_status(uid, "connected")
    assert await backend.input_connected(user) is True
    api.set_status(uid, "reconnected")
    assert await backend.input_connected(user) is True
    api.set_status(uid, "client_disconnect")
    assert await backend.input_connected(user) is False
    api.drop_input(uid)
    assert await backend.input_connected(user) is False  # and a new input is made
    [new_uid] = api.inputs
    assert new_uid != uid and (await stored(user)).remote_id == new_uid


async def test_input_connected_asks_cloudflare_once_per_poll_interval(api, backend, configure_livestream):
    configure_livestream(CLOUDFLARE_POLL_INTERVAL=30)
    user = await make_user()
    await backend.ingest(user)
    [uid] = api.inputs
    api.set_status(uid, "connected")
    backend.input_state_changed(user, True)  # what the manager knows: connected
    gets = lambda: len(api.calls("GET"))  # noqa: E731
    mark = gets()
    assert [await backend.input_connected(user) for _ in range(5)] == [True] * 5
    assert gets() == mark + 1
    # A webhook said "disconnected" (the manager tells us): the cached "connected" disagrees
    # with it, so each poll asks again; a reused answer would confirm a stale state.
    api.set_status(uid, "client_disconnect")
    backend.input_state_changed(user, False)
    assert await backend.input_connected(user) is False
    assert gets() == mark + 2
    # A webhook says "connected" but Cloudflare's status lags: every poll asks again (the
    # manager needs two real answers before it believes the poll over the webhook).
    backend.input_state_changed(user, True)
    assert [await backend.input_connected(user) for _ in range(3)] == [False] * 3
    assert gets() == mark + 5


async def test_a_refused_token_fails_with_a_clear_reason(api, backend):
    user = await make_user()
    api.token = "revoked"  # the server no longer accepts the client's token
    with pytest.raises(CloudflareError) as raised:
        await backend.ingest(user)
    assert str(raised.value) == REFUSED_TOKEN
    assert backend.unavailable() == REFUSED_TOKEN
    assert [r.status for r in api.requests] == [401]


async def test_an_output_reports_a_refused_token_and_recovers_when_it_is_accepted_again(api, backend):
    user = await make_user()
    await backend.ingest(user)
    good, api.token = api.token, "revoked"
    reports = Reports()
    task = asyncio.create_task(backend.run_output(user, spec(), reports))
    try:
        await wait_until(lambda: reports.state == FAILED, 5, "failed")
        assert reports.errors() == [REFUSED_TOKEN]
        api.token = good
        await wait_until(
            lambda: reports.state == STARTING and api.outputs.get(next(iter(api.inputs))), 5, "retried"
        )
        assert backend.unavailable() is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_429_waits_retry_after_then_succeeds(api, backend):
    user = await make_user()
    api.fail_next(429, count=2, retry_after=0.4)
    started = time.monotonic()
    ingest = await backend.ingest(user)
    assert time.monotonic() - started >= 0.8
    assert ingest.stream_key
    assert [r.status for r in api.requests] == [429, 429, 200]


async def test_429_longer_than_a_page_can_wait_raises_rate_limited(api, backend):
    user = await make_user()
    api.fail_next(429, count=1, retry_after=30)
    started = time.monotonic()
    with pytest.raises(CloudflareError) as raised:
        await backend.ingest(user)
    assert time.monotonic() - started < 1
    assert str(raised.value) == RATE_LIMITED and raised.value.retry_after == 30


async def test_an_output_backs_off_on_429_without_failing(api, backend):
    user = await make_user()
    await backend.ingest(user)
    await inputs.set_input(user, True)
    api.fail_next(429, count=1, retry_after=0.5)
    reports = Reports()
    started = time.monotonic()
    task = asyncio.create_task(backend.run_output(user, spec(), reports))
    try:
        await wait_until(lambda: reports.state == LIVE, 5, "live")
        assert time.monotonic() - started >= 0.5
        assert FAILED not in [state for state, _ in reports.seen]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_run_output_creates_an_enabled_output_goes_live_and_deletes_it_on_cancel(api, backend):
    user = await make_user()
    await backend.ingest(user)
    [uid] = api.inputs
    reports = Reports()
    task = asyncio.create_task(backend.run_output(user, spec(1), reports))
    await wait_until(lambda: api.outputs.get(uid), 5, "output created")
    [output] = api.outputs[uid].values()
    assert (output["url"], output["streamKey"], output["enabled"]) == (
        "rtmp://127.0.0.1:1901/live",
        "dest-key-1",
        True,
    )
    [create] = api.calls("POST", "/outputs")
    assert create.body == {"url": "rtmp://127.0.0.1:1901/live", "streamKey": "dest-key-1", "enabled": True}
    await wait_until(lambda: reports.state == STARTING, 2, "starting (no publisher yet)")
    # OBS connects: the webhook records it and the manager tells the backend; the output is
    # live at once, not at its next poll.
    await inputs.set_input(user, True)
    backend.input_state_changed(user, True)
    await wait_until(lambda: reports.state == LIVE, 1, "live")
    # Cloudflare allows 1,200 calls per 5 minutes per token: a running output lists its
    # input's outputs once per CLOUDFLARE_POLL_INTERVAL (0.2 s here) and asks nothing else.
    mark = len(api.requests)
    await asyncio.sleep(1.0)
    polls = api.requests[mark:]
    assert {(r.method, r.path.rsplit("/", 1)[-1]) for r in polls} <= {("GET", "outputs")}
    assert 3 <= len(polls) <= 7
    started = time.monotonic()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert time.monotonic() - started < 2
    assert api.outputs[uid] == {}
    assert reports.seen[-1] == (OFF, None)
    assert [r.status for r in api.calls("DELETE", "/outputs/")] == [200]


async def test_run_output_adopts_a_leftover_output_for_the_same_destination(api, backend):
    """A worker killed while relaying leaves its output at Cloudflare: the next owner takes it
    over (enables it) instead of adding a second publisher to the same destination."""
    user = await make_user()
    await backend.ingest(user)
    [uid] = api.inputs
    client = backend._st().client
    leftover = await client.stream.live_inputs.outputs.create(
        uid, account_id=api.account_id, url=spec(1).url, stream_key=spec(1).key, enabled=False
    )
    reports = Reports()
    task = asyncio.create_task(backend.run_output(user, spec(1), reports))
    try:
        await wait_until(lambda: api.outputs[uid][leftover.uid]["enabled"], 5, "leftover enabled")
        assert len(api.outputs[uid]) == 1
        assert len(api.calls("POST", "/outputs")) == 1  # only the leftover's own creation
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert api.outputs[uid] == {}


async def test_two_outputs_and_one_cancelled_leaves_the_other(api, backend):
    user = await make_user()
    await backend.ingest(user)
    [uid] = api.inputs
    one, two = Reports(), Reports()
    first = asyncio.create_task(backend.run_output(user, spec(1), one))
    second = asyncio.create_task(backend.run_output(user, spec(2), two))
    await wait_until(lambda: len(api.outputs.get(uid, {})) == 2, 5, "two outputs")
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert [o["streamKey"] for o in api.outputs[uid].values()] == ["dest-key-2"]
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert api.outputs[uid] == {}


async def test_new_key_refuses_the_old_one_and_running_outputs_move_over(api, backend):
    user = await make_user()
    old = await backend.ingest(user)
    [old_uid] = api.inputs
    reports = Reports()
    task = asyncio.create_task(backend.run_output(user, spec(1), reports))
    try:
        await wait_until(lambda: api.outputs.get(old_uid), 5, "output on the old input")
        new = await backend.new_key(user)
        assert new.stream_key != old.stream_key
        # The old input is deleted: Cloudflare blocks current and future broadcasts to its key.
        assert old_uid not in api.inputs
        assert [r.status for r in api.calls("DELETE") if r.path.endswith(old_uid)] == [200]
        [new_uid] = api.inputs
        assert api.inputs[new_uid]["rtmps"]["streamKey"] == new.stream_key
        assert (await stored(user)).remote_id == new_uid
        assert secrets.decrypt((await stored(user)).key_encrypted) == new.stream_key
        await wait_until(lambda: api.outputs.get(new_uid), 2, "output moved to the new input")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_cloudflare_unreachable_fails_the_output_and_it_recovers(api, backend):
    user = await make_user()
    first = await backend.ingest(user)
    await inputs.set_input(user, True)
    port = api.port
    api.close()
    # The Stream page still shows the stored ingest.
    assert await backend.ingest(user) == first
    reports = Reports()
    task = asyncio.create_task(backend.run_output(user, spec(), reports))
    try:
        await wait_until(lambda: reports.state == FAILED, 5, "failed")
        assert reports.errors() == [UNREACHABLE]
        api.serve(port)
        await wait_until(lambda: reports.state == LIVE, 5, "live after Cloudflare came back")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_unreachable_without_a_stored_input_raises(api, backend):
    user = await make_user()
    api.close()
    with pytest.raises(CloudflareError) as raised:
        await backend.ingest(user)
    assert str(raised.value) == UNREACHABLE


def test_missing_settings_are_named_at_start_and_never_their_values(settings, configure_livestream):
    configure_livestream(BROADCAST_BACKEND="cloudflare", CLOUDFLARE_API_TOKEN="tok-secret-value")
    with pytest.raises(ImproperlyConfigured) as raised:
        livestream_conf.validate(livestream_conf.get_settings())
    message = str(raised.value)
    assert "CLOUDFLARE_ACCOUNT_ID must be set" in message
    assert "CLOUDFLARE_WEBHOOK_SECRET must be set" in message
    assert "CLOUDFLARE_API_TOKEN" not in message and "tok-secret-value" not in message
    assert CloudflareBackend().unavailable() == (
        "Cloudflare Stream is not configured: set CLOUDFLARE_ACCOUNT_ID, CLOUDFLARE_WEBHOOK_SECRET"
    )


def test_the_selfhosted_backend_needs_no_cloudflare_settings(configure_livestream):
    configure_livestream(BROADCAST_BACKEND="selfhosted")
    livestream_conf.validate(livestream_conf.get_settings())


async def test_a_cloudflare_5xx_fails_the_output_with_its_message_and_it_retries(api, backend):
    user = await make_user()
    await backend.ingest(user)
    await inputs.set_input(user, True)
    api.fail_next(500, count=1)
    reports = Reports()
    task = asyncio.create_task(backend.run_output(user, spec(), reports))
    try:
        await wait_until(lambda: reports.state == LIVE, 5, "live after the retry")
        assert reports.errors() == ["Cloudflare answered 500: injected failure"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_two_processes_creating_the_first_input_at_once_agree_on_one(api, backend):
    """daphne (the Stream page) and the worker (the manager) may both find no input for a new
    user: both create one at Cloudflare, one row wins, the other's input is deleted again."""
    user = await make_user()
    other = CloudflareBackend()  # another process: its own locks
    try:
        first, second = await asyncio.gather(backend.ingest(user), other.ingest(user))
    finally:
        await other.aclose()
    assert first == second
    assert len(api.calls("POST")) == 2
    [uid] = api.inputs
    assert (await stored(user)).remote_id == uid
    assert api.inputs[uid]["rtmps"]["streamKey"] == first.stream_key


async def test_a_cancel_that_meets_a_wakeup_still_stops_the_output(api, backend):
    """End stream while the input changes: the cancel and the wake-up reach the output in
    the same loop iteration. (asyncio.wait_for on Python 3.11 swallowed such a cancel: the
    output never stopped.)"""
    user = await make_user()
    await backend.ingest(user)
    [uid] = api.inputs
    for _ in range(5):
        reports = Reports()
        task = asyncio.create_task(backend.run_output(user, spec(), reports))
        await wait_until(lambda r=reports: r.state == STARTING and api.outputs.get(uid), 5, "output running")
        await asyncio.sleep(0.05)  # parked in its wait for the next poll
        backend.input_state_changed(user, True)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=3)
        assert done, "run_output ignored its cancel"
        assert api.outputs[uid] == {}


async def test_an_input_deleted_while_live_is_recreated_and_the_output_follows(api, backend):
    user = await make_user()
    old = await backend.ingest(user)
    [old_uid] = api.inputs
    reports = Reports()
    task = asyncio.create_task(backend.run_output(user, spec(), reports))
    try:
        await wait_until(lambda: api.outputs.get(old_uid), 5, "output on the first input")
        api.drop_input(old_uid)  # deleted in the Cloudflare dashboard mid-stream
        await wait_until(lambda: [u for u in api.inputs if api.outputs.get(u)], 5, "output on a new input")
        [new_uid] = api.inputs
        assert new_uid != old_uid and (await stored(user)).remote_id == new_uid
        assert (await backend.ingest(user)).stream_key != old.stream_key
        assert FAILED not in [state for state, _ in reports.seen]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert api.outputs.get(new_uid) == {}


async def test_an_output_whose_key_is_in_its_url_is_split_as_cloudflare_wants(api, backend):
    """An output entered as one URL (".../app/<key>", key field empty): Cloudflare's output
    takes the URL and the stream key apart, and refuses an empty streamKey."""
    user = await make_user()
    await backend.ingest(user)
    [uid] = api.inputs
    whole = OutputSpec(id="9", name="one url", url="rtmp://127.0.0.1:1999/app/the-key", key="", enabled=True)
    task = asyncio.create_task(backend.run_output(user, whole, Reports()))
    try:
        await wait_until(lambda: api.outputs.get(uid), 5, "output created")
        [output] = api.outputs[uid].values()
        assert (output["url"], output["streamKey"]) == ("rtmp://127.0.0.1:1999/app", "the-key")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert api.outputs[uid] == {}
