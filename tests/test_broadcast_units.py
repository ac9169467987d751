"""Issue 18's pieces on their own: the ingest config and callbacks, output validation, relay
error reasons, /stat parsing, output sources, the input state and the go_live guard."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from django.test import AsyncClient, AsyncRequestFactory

from broadcast import ingest, inputs, views
from broadcast.backends import get_backend
from broadcast.backends.base import OutputSpec
from broadcast.backends.selfhosted import SelfHostedBackend
from broadcast.ingest_control import publishing
from broadcast.models import StreamIngest, StreamOutput, key_hash
from broadcast.outputs import outputs_for, register_source, unregister_source
from broadcast.relay import clean_reason
from devtools.processes import free_port, wait_until
from livestream import keys
from livestream.components import stream_state
from livestream.components.base import CommandError
from livestream.components.cloudflare_manager import CloudflareManager, validate_output
from livestream.redis import get_redis
from streampai import secrets


def test_ingest_config_keeps_keys_out_of_logs_and_play_local():
    conf = ingest.IngestConfig(Path("/tmp/x"), 19350, "http://127.0.0.1:8123")
    text = ingest.render(conf)
    assert "access_log off;" in text and "error_log /tmp/x/logs/error.log warn;" in text
    assert "allow play 127.0.0.1;\n            deny play all;" in text
    assert f"on_publish http://127.0.0.1:8123/broadcast/ingest/{ingest.callback_secret()}/publish;" in text
    assert "listen 19350;" in text
    assert ingest.stream_name("42") == "u42" and ingest.user_of_stream("u42") == "42"
    assert ingest.user_of_stream("sp_key") is None and ingest.user_of_stream("u") is None


def test_output_validation():
    assert validate_output({"name": " Twitch ", "url": "rtmp://live.twitch.tv/app", "key": "k1"}) == (
        "Twitch",
        "rtmp://live.twitch.tv/app",
        "k1",
    )
    for bad, why in [
        ({"name": "", "url": "rtmp://h/a", "key": ""}, "name is required"),
        ({"name": "x", "url": "http://h/a", "key": ""}, "rtmp://"),
        ({"name": "x", "url": "rtmp:///a", "key": ""}, "rtmp://"),
        ({"name": "x", "url": "rtmp://h/a b", "key": ""}, "rtmp://"),
        ({"name": "x", "url": "rtmp://h/a", "key": "a b"}, "spaces"),
        ({"name": "x" * 101, "url": "rtmp://h/a", "key": ""}, "too long"),
        ({"name": 5, "url": "rtmp://h/a"}, "must be a string"),
        ({"name": "x", "url": "rtmp://h/a", "extra": 1}, "unknown field"),
    ]:
        with pytest.raises(CommandError, match=why):
            validate_output(bad)


def test_relay_reasons_never_carry_the_key_or_url():
    spec = OutputSpec("1", "T", "rtmp://live.example/app", "live_secret_123456", True)
    line = "[rtmp @ 0x55d] Cannot open connection rtmp://live.example/app/live_secret_123456: refused"
    reason = clean_reason(line, spec)
    assert "live_secret" not in reason and "live.example" not in reason
    assert reason == "Cannot open connection <output>: refused"
    assert "live_secret" not in repr(spec)


def test_stat_parsing():
    xml = (
        "<rtmp><server><application><name>live</name><live>"
        "<stream><name>u7</name><client><id>3</id><publishing/></client><publishing/><active/></stream>"
        "<stream><name>u8</name><client><id>4</id></client></stream>"
        "</live></application></server></rtmp>"
    )
    assert publishing(xml) == {"u7"}
    assert publishing("not xml") == set()


def test_backend_is_chosen_by_the_setting_by_name_only(configure_livestream):
    from django.core.exceptions import ImproperlyConfigured

    from livestream.conf import get_settings, validate

    assert isinstance(get_backend(), SelfHostedBackend)
    # A dotted path is never imported (issue 20: nothing from a string an environment carries).
    configure_livestream(BROADCAST_BACKEND="broadcast.backends.selfhosted.SelfHostedBackend")
    with pytest.raises(ImproperlyConfigured, match="not one of selfhosted, cloudflare"):
        get_backend()
    with pytest.raises(ImproperlyConfigured, match="BROADCAST_BACKEND must be"):
        validate(get_settings())


@pytest.mark.django_db(transaction=True)
async def test_callbacks_accept_only_the_local_ingest_and_known_keys(django_user_model, caplog):
    user = await django_user_model.objects.acreate(username="s", email="s@example.com")
    backend = SelfHostedBackend()
    key = (await backend.ingest(str(user.pk))).stream_key
    row = await StreamIngest.objects.aget(user=user)
    assert row.key_hash == key_hash(key) and key not in row.key_encrypted
    secret = ingest.callback_secret()
    client = AsyncClient()
    form = {"app": "live", "name": key, "addr": "10.0.0.9", "clientid": "7", "call": "publish"}

    # Wrong secret, or not from loopback: not even a 403 to learn from.
    assert (await client.post(f"/broadcast/ingest/{'0' * 40}/publish", form)).status_code == 404
    remote = AsyncRequestFactory().post(f"/broadcast/ingest/{secret}/publish", form)
    remote.META["REMOTE_ADDR"] = "10.1.2.3"
    assert (await views.publish(remote, secret)).status_code == 404

    bad = await client.post(f"/broadcast/ingest/{secret}/publish", {**form, "name": "sp_nope"})
    assert bad.status_code == 403
    as_internal = await client.post(f"/broadcast/ingest/{secret}/publish", {**form, "name": f"u{user.pk}"})
    assert as_internal.status_code == 403  # the internal name is not a key

    good = await client.post(f"/broadcast/ingest/{secret}/publish", form)
    assert good.status_code == 302 and good["Location"] == f"u{user.pk}"
    assert (await inputs.get_input(str(user.pk))).connected
    # A second publish on the same key (nginx refuses it) ends without ending the first.
    await client.post(f"/broadcast/ingest/{secret}/publish", {**form, "clientid": "8"})
    await client.post(f"/broadcast/ingest/{secret}/publish_done", {**form, "clientid": "8"})
    assert (await inputs.get_input(str(user.pk))).connected
    # The key replaced meanwhile: the publish still ends; the old key is refused from now on.
    await backend.new_key(str(user.pk))
    await client.post(f"/broadcast/ingest/{secret}/publish_done", form)
    assert not (await inputs.get_input(str(user.pk))).connected
    assert (await client.post(f"/broadcast/ingest/{secret}/publish", form)).status_code == 403
    assert key not in caplog.text and "unknown or old stream key" in caplog.text


@pytest.mark.django_db(transaction=True)
async def test_outputs_rows_then_sources_and_unreadable_keys(django_user_model, settings):
    user = await django_user_model.objects.acreate(username="o", email="o@example.com")
    row = StreamOutput(user=user, name="T", url="rtmp://a/app")
    row.set_key("k-1")
    await row.asave()
    assert "k-1" not in row.key_encrypted

    async def platform(user_id: str) -> list[OutputSpec]:
        return [OutputSpec(f"twitch:{user_id}", "Twitch", "rtmp://t/app", "tk", True)]

    async def broken(user_id: str) -> list[OutputSpec]:
        raise RuntimeError("down")

    register_source(platform)
    register_source(broken)
    try:
        specs = await outputs_for(str(user.pk))
    finally:
        unregister_source(platform)
        unregister_source(broken)
    assert [(s.id, s.key, s.enabled) for s in specs] == [
        (str(row.pk), "k-1", True),
        (f"twitch:{user.pk}", "tk", True),
    ]
    settings.SECRETS_KEY = "another key entirely"
    (spec,) = await outputs_for(str(user.pk))
    assert spec.key == "" and spec.enabled is False
    with pytest.raises(secrets.SecretError):
        row.key  # noqa: B018


async def test_set_input_wakes_and_holds_the_streams_presence():
    redis = get_redis()
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.broadcast_wake())
    await pubsub.get_message(timeout=1)
    assert await inputs.set_input("77", True) is True
    assert await inputs.set_input("77", True) is False  # no change, no wake-up
    message = await pubsub.get_message(timeout=1)
    while message is not None and message["type"] != "message":
        message = await pubsub.get_message(timeout=1)
    assert message is not None and message["data"] == "77"
    state = await inputs.get_input("77")
    assert state.connected and state.ref and state.ref.startswith("stream-")
    users = await redis.hgetall(keys.presence_user("users_presence", "77"))
    assert json.loads(users[state.ref])["kind"] == "stream"
    assert await inputs.release_presence("77") is True
    assert await inputs.release_presence("77") is False
    assert not await redis.hgetall(keys.presence_user("users_presence", "77"))
    await pubsub.aclose()


class Guard:
    def __init__(self, refuse: str | None) -> None:
        self.refuse, self.seen = refuse, []

    async def can_go_live(self) -> str | None:
        return self.refuse

    def stream_state_changed(self, state: str) -> None:
        self.seen.append(state)


async def test_go_live_asks_the_participant_and_end_stream_carries_a_reason(configure_livestream):
    configure_livestream(STREAM_START_DELAY=0, STREAM_END_DELAY=0)
    server = stream_state.StreamStateServer("91")
    guard = Guard("no input connected: start OBS")
    stream_state.register_participant("91", guard)
    try:
        with pytest.raises(CommandError, match="no input connected"):
            await server.on_command("go_live", {})
        configure_livestream(STREAM_START_DELAY=0, STREAM_END_DELAY=0, BROADCAST_REQUIRED=False)
        assert (await server.on_command("go_live", {}))["state"] == "starting"
        assert guard.seen == ["starting"]
        assert await stream_state.end_stream("91", "input disconnected for more than 30s")
        fields = await get_redis().hgetall(keys.stream_state("91"))
        assert fields["state"] == "ending" and fields["reason"] == "input disconnected for more than 30s"
        assert stream_state.snapshot(fields)["ended_reason"] == "input disconnected for more than 30s"
        assert not await stream_state.end_stream("91", "again")  # not live any more
        await server._move(stream_state.OFFLINE, stream_state.ENDING)
        data = await server.on_command("go_live", {})
        assert data["ended_reason"] is None  # a new stream forgets the last end's reason
    finally:
        stream_state.unregister_participant("91", guard)


async def test_a_streams_presence_keeps_the_manager_but_not_the_alerts_flowing():
    """AlertManager emits only while a tab is open: the stream's presence connection is no tab."""
    from alerts.queue import AWAY, AlertQueue
    from livestream.presence.store import PresenceStore

    queue = AlertQueue("78")
    await queue.push({"id": "a1", "kind": "donation", "from": "Ana", "amount": 5, "currency": "EUR"}, cap=10)
    await queue.claim("tok")
    await inputs.set_input("78", True)  # the stream holds presence, no tab
    assert await PresenceStore().sessions("78") == 1
    assert await queue.take("tok") == AWAY
    await PresenceStore().track("78", {"ref": "tab-1", "email": "", "joined_at": 0})
    assert (await queue.take("tok")).alert["id"] == "a1"


async def _next_message(pubsub) -> dict:
    """The next published message (a subscribe confirmation reads as None: skipped)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            return json.loads(message["data"])
    raise AssertionError("nothing published for 5 s")


async def _events_until_marker(pubsub, channel: str) -> list[tuple[str, dict]]:
    """The (event, data) published on ``channel`` before a marker this test publishes now."""
    await get_redis().publish(channel, json.dumps({"type": "marker"}))
    seen = []
    while True:
        body = await _next_message(pubsub)
        if body["type"] == "marker":
            return seen
        frame = json.loads(body["frame"])
        seen.append((frame["event"], frame["data"]))


@pytest.mark.django_db(transaction=True)
async def test_a_managers_start_is_one_read_and_sends_only_what_changed(django_user_model):
    """10,000 managers start in one worker: a start reads Redis once, sends an event only if
    the kept one is stale, makes no ingest (create_key does, on demand) and reads no outputs
    until something needs them; an idle manager has nothing due."""
    from streampai.redisconf import redis_client

    user = await django_user_model.objects.acreate(username="cheap", email="cheap@example.com")
    uid = str(user.pk)
    listener = redis_client(None)
    pubsub = listener.pubsub()
    await pubsub.subscribe(keys.control(uid))
    try:
        first = CloudflareManager(uid)
        await first._start()
        assert first._dirty.is_set()  # no outputs kept yet: read, and due to be sent
        sender = asyncio.create_task(first._emit_outputs_loop())
        events = await _wait_for_events(pubsub, keys.control(uid), {"ingest", "input", "outputs"})
        sender.cancel()
        assert events["ingest"]["key_masked"] is None and events["outputs"] == {"outputs": []}
        assert events["input"]["state"] == "disconnected"
        assert not await StreamIngest.objects.filter(user_id=user.pk).aexists()

        again = CloudflareManager(uid)
        await again._start()
        assert await _events_until_marker(pubsub, keys.control(uid)) == []
        assert not again._outputs_loaded and not again._dirty.is_set()
        assert again._wait_for(time.monotonic() + 5, time.monotonic()) == float("inf")

        masked = (await again.on_command("create_key", {}))["key_masked"]
        assert masked.startswith("••••")
        assert (await again.on_command("create_key", {}))["key_masked"] == masked  # idempotent
        assert [e for e, _ in await _events_until_marker(pubsub, keys.control(uid))] == ["ingest", "ingest"]
        assert await StreamIngest.objects.filter(user_id=user.pk).acount() == 1

        assert "no input connected" in (await again.can_go_live() or "")
        await inputs.set_input(uid, True)
        await again._read_input()
        assert "no output enabled" in (await again.can_go_live() or "") and again._outputs_loaded
        assert again._wait_for(time.monotonic() + 5, time.monotonic()) <= 5  # active: polled
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def _wait_for_events(pubsub, channel: str, names: set[str]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    while not names <= set(found):
        frame = json.loads((await _next_message(pubsub))["frame"])
        found[frame["event"]] = frame["data"]
    return found


@pytest.mark.django_db(transaction=True)
async def test_a_presence_id_that_names_no_account_has_no_rows(django_user_model):
    """A load generator's "w17": no outputs, no stored ingest, create_key refused clearly."""
    manager = CloudflareManager("w17")
    assert await outputs_for("w17") == []
    assert await manager.backend.stored_ingest("w17") is None
    with pytest.raises(Exception, match="no such user"):
        await manager.backend.ingest("w17")


async def test_one_stat_request_answers_every_users_poll(tmp_path, monkeypatch):
    """Twenty live users' polls at once: one /stat on the ingest's socket, one HTTP client."""
    from broadcast import ingest_control

    sock, requests = tmp_path / "control.sock", []
    body = b"<rtmp><server><application><live><stream><name>u7</name><publishing/></stream></live></application></server></rtmp>"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            if line.startswith(b"GET "):
                requests.append(line.split()[1])
            if line == b"\r\n":
                await asyncio.sleep(0.05)  # the ingest takes a moment: the polls pile up meanwhile
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(sock))
    try:
        answers = await asyncio.gather(*(ingest_control.publishing_now(sock) for _ in range(20)))
        assert answers == [{"u7"}] * 20
        assert requests == [b"/stat"]
        monkeypatch.setattr(ingest_control, "STAT_MAX_AGE", 0.0)
        assert await ingest_control.publishing_now(sock) == {"u7"}
        assert requests == [b"/stat", b"/stat"]
        assert len(ingest_control._control().clients) == 1
    finally:
        server.close()
        await ingest_control._control().clients[sock].aclose()


async def test_a_relay_starts_ffmpeg_only_through_its_components_gate():
    """The CloudflareManager hands its own may_act to the relays: once it was stopped that stays
    false, so a relay task whose cancel was lost (livestream.tasks.keep_cancelling) waits and
    starts no second publisher beside the next run's relay. Opened, the same relay runs ffmpeg
    (here to an ingest that refuses it: it exits with a reason)."""
    import psutil

    from broadcast import relay

    asked = 0
    gate_open = False

    def gate() -> bool:
        nonlocal asked
        asked += 1
        return gate_open

    def ffmpegs() -> list[psutil.Process]:
        return [child for child in psutil.Process().children() if "ffmpeg" in child.name()]

    closed = free_port()  # nothing listens there
    spec = OutputSpec(id="1", name="A", url=f"rtmp://127.0.0.1:{closed}/app", key="out-key", enabled=True)
    task = asyncio.create_task(
        relay.run_relay("7", f"rtmp://127.0.0.1:{closed}/live/u7", spec, lambda: None, gate)
    )
    await wait_until(lambda: asked >= 5, 5, "the gate asked five times")
    assert not task.done() and ffmpegs() == []
    gate_open = True
    result = await asyncio.wait_for(task, 20)
    assert result.returncode != 0 and result.frames == 0, result
