"""The component API in-process, against the real Redis: emit (and sticky state read with
the track), commands run once with every failure a reply, StreamStateServer's states and
resumption, per-user choices, the daphne side's validation, the new settings. (Over 300
lines: one module for the whole in-process API, a section per part.)"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from dashboard.ws.commands import BadCommand, client_id, validate
from devtools.clients import listen, next_json
from devtools.processes import wait_until
from livestream import keys
from livestream.components import choices, commands
from livestream.components import emitter as component_events
from livestream.components.alert_manager import AlertManager
from livestream.components.base import CommandError, Component
from livestream.components.cloudflare_manager import CloudflareManager
from livestream.components.console_logger import ConsoleLogger
from livestream.components.stream_state import StreamStateServer
from livestream.components.user_manager import UserStreamManager
from livestream.conf import LivestreamSettings, get_settings
from livestream.conf import validate as validate_settings
from livestream.presence.store import PresenceStore
from livestream.redis import get_redis
from livestream.worker.presence_manager import PresenceManager
from tests.components import Echo

# -- helpers -------------------------------------------------------------------


async def tab(user_id: str) -> Any:
    """A subscriber to the user's control channel: what daphne hears for their tabs."""
    return await listen(keys.control(user_id))


async def heard(pubsub: Any, timeout: float = 2.0) -> dict[str, Any]:
    return await next_json(pubsub, timeout)


def command(user_id: str, component: str, name: str, args: dict[str, Any] | None = None, **extra: Any):
    fields = {
        "user_id": user_id,
        "component": component,
        "command": name,
        "args": args or {},
        "id": "c1",
        "key": uuid.uuid4().hex,
        "to": "tok",
        "sent": time.time(),
        **extra,
    }
    return commands.Command(**fields)


async def running(user_id: str, classes: list[type[Component]]) -> tuple[PresenceManager, UserStreamManager]:
    pm = PresenceManager()
    manager = pm.local.managers[user_id] = UserStreamManager(user_id, classes)
    manager.start()
    await wait_until(lambda: all(c.state == "running" for c in manager.children), 2, "components running")
    return pm, manager


async def reply_of(pm: PresenceManager, cmd: commands.Command, pubsub: Any) -> dict[str, Any]:
    await commands.execute(pm.local.managers, pm.worker_id, cmd)
    message = await heard(pubsub)
    assert message["type"] == "component.reply" and message["to"] == "tok" and message["key"] == cmd.key
    return json.loads(message["frame"])


# -- emit and sticky state -------------------------------------------------------


async def test_emit_reaches_the_users_channel_in_the_wire_format_and_only_theirs():
    mine, other = await tab("7"), await tab("8")
    component = Echo("7")
    for n in range(5):
        await component.emit("tick", {"n": n})
    for n in range(5):
        message = await heard(mine)
        assert message["type"] == "component.event" and message["user_id"] == "7"
        assert json.loads(message["frame"]) == {
            "type": "event",
            "component": "Echo",
            "event": "tick",
            "data": {"n": n},
        }
    with pytest.raises(TimeoutError):
        await heard(other, 0.2)
    assert await get_redis().hgetall(keys.sticky("7")) == {}  # not sticky


async def test_sticky_events_keep_the_last_value_and_come_back_with_a_connects_track():
    component = Echo("7")
    await component.emit("state", {"v": 1}, sticky=True)
    await component.emit("state", {"v": 2}, sticky=True)
    await component.emit("other", {"v": 3}, sticky=True)
    store = PresenceStore()
    meta = {"email": "a@b.c", "joined_at": 1, "ref": "r1"}
    [join] = await store.track_many([("7", meta)], sticky=True)
    assert join is not None
    frames = sorted(json.loads(f)["data"]["v"] for f in join.sticky)
    assert frames == [2, 3]
    # A heartbeat (already tracked) and a connect without sticky carry nothing.
    assert await store.track_many([("7", meta)], sticky=True) == [None]
    [plain] = await store.track_many([("7", {**meta, "ref": "r2"})])
    assert plain is not None and plain.sticky == ()
    assert await component_events.forget_sticky("7", "Echo") == 2
    [after] = await store.track_many([("7", {**meta, "ref": "r3"})], sticky=True)
    assert after is not None and after.sticky == ()


async def test_emit_refuses_data_that_is_not_json():
    with pytest.raises(TypeError):
        await Echo("7").emit("bad", {"x": object()})


# -- commands on the worker side -------------------------------------------------


async def test_a_command_runs_and_its_reply_goes_to_the_sending_socket_token():
    pubsub = await tab("7")
    pm, manager = await running("7", [Echo])
    try:
        frame = await reply_of(pm, command("7", "Echo", "whoami", {"a": 1}), pubsub)
        assert frame["type"] == "reply" and frame["id"] == "c1" and frame["ok"] is True
        assert frame["result"]["args"] == {"a": 1}
    finally:
        await manager.stop()


@pytest.mark.parametrize(
    ("component", "name", "error"),
    [
        ("Nope", "whoami", "unknown component 'Nope'"),
        ("Echo", "nope", "unknown command 'nope'"),
        ("Echo", "refuse", "refused on purpose"),
        ("Echo", "crash", "internal error"),
        ("Echo", "list", "internal error"),
    ],
)
async def test_every_failure_is_an_error_reply(component: str, name: str, error: str, caplog):
    pubsub = await tab("7")
    pm, manager = await running("7", [Echo])
    try:
        frame = await reply_of(pm, command("7", component, name), pubsub)
        assert frame == {"type": "reply", "id": "c1", "ok": False, "error": error}
        assert caplog.text.count(f"command {component}.{name} of 7") == 1  # one log line
        assert manager.supervisor("Echo").state == "running"  # never a crash
    finally:
        await manager.stop()


async def test_no_manager_here_is_an_error_reply():
    pubsub = await tab("7")
    frame = await reply_of(PresenceManager(), command("7", "Echo", "whoami"), pubsub)
    assert frame["ok"] is False and frame["error"] == commands.NO_MANAGER


async def test_a_command_runs_once_per_key_even_if_delivered_twice(aredis, key_prefix):
    pubsub = await tab("7")
    pm, manager = await running("7", [Echo])
    try:
        cmd = command("7", "Echo", "slow", {"seconds": 0})
        first = await reply_of(pm, cmd, pubsub)
        second = await reply_of(pm, cmd, pubsub)  # e.g. resent to a new owner after a failover
        assert first["ok"] is True
        assert second["ok"] is False and "not run again" in second["error"]
        assert await aredis.get(f"{key_prefix}:test:slow:7") == "1"
    finally:
        await manager.stop()


async def test_a_command_older_than_the_timeout_is_dropped(aredis, key_prefix, caplog):
    pubsub = await tab("7")
    pm, manager = await running("7", [Echo])
    try:
        old = command("7", "Echo", "slow", {"seconds": 0}, sent=time.time() - 60)
        await commands.execute(pm.local.managers, pm.worker_id, old)
        with pytest.raises(TimeoutError):
            await heard(pubsub, 0.2)
        assert await aredis.get(f"{key_prefix}:test:slow:7") is None
        assert "(the tab timed out)" in caplog.text
    finally:
        await manager.stop()


def test_a_malformed_command_message_is_a_value_error():
    good = commands.to_message(command("7", "Echo", "whoami"))
    assert commands.parse(good).command == "whoami"
    for bad in ({"user_id": "x\n"}, {"args": []}, {"key": ""}, {"sent": "now"}, {"component": 3}):
        with pytest.raises(ValueError):
            commands.parse({**good, **bad})


# -- the daphne side's validation -----------------------------------------------


def test_validate_command_frames():
    assert validate({"component": "A", "command": "b", "args": {"x": 1}}) == ("A", "b", {"x": 1})
    assert validate({"component": "A", "command": "b"}) == ("A", "b", {})
    for bad in (
        {"command": "b"},
        {"component": "", "command": "b"},
        {"component": "A" * 101, "command": "b"},
        {"component": "A", "command": 3},
        {"component": "A", "command": "b", "args": [1]},
    ):
        with pytest.raises(BadCommand):
            validate(bad)
    assert client_id({"id": "c1"}) == "c1" and client_id({"id": 5}) == 5
    assert client_id({"id": True}) is None and client_id({"id": "x" * 101}) is None and client_id({}) is None


# -- StreamStateServer ----------------------------------------------------------


async def test_stream_state_goes_live_and_ends_with_timestamps_and_sticky_events(configure_livestream):
    configure_livestream(STREAM_START_DELAY=0.2, STREAM_END_DELAY=0.2)
    pubsub = await tab("7")
    _pm, manager = await running("7", [StreamStateServer])
    server = manager.component("StreamStateServer")
    assert isinstance(server, StreamStateServer)
    try:
        with pytest.raises(CommandError, match="cannot end the stream while the stream is offline"):
            await server.on_command("end_stream", {})
        with pytest.raises(CommandError, match="takes no arguments"):
            await server.on_command("go_live", {"x": 1})
        started = time.monotonic()
        assert (await server.on_command("go_live", {}))["state"] == "starting"
        with pytest.raises(CommandError, match="cannot go live while the stream is starting"):
            await server.on_command("go_live", {})
        states = []
        while len(states) < 3:  # the state at start (issue 17: sent even if never live), then the changes
            states.append(json.loads((await heard(pubsub))["frame"])["data"])
        assert [s["state"] for s in states] == ["offline", "starting", "live"]
        states = states[1:]
        assert 0.15 <= time.monotonic() - started <= 1.5
        assert states[1]["started_at"] <= states[1]["live_at"] == states[1]["since"]
        assert (await server.on_command("end_stream", {}))["state"] == "ending"
        ended = [json.loads((await heard(pubsub))["frame"])["data"] for _ in range(2)]
        assert [s["state"] for s in ended] == ["ending", "offline"]
        assert ended[1]["ended_at"] >= ended[1]["ending_at"] >= ended[1]["live_at"]
        sticky = await get_redis().hgetall(keys.sticky("7"))
        assert json.loads(sticky["StreamStateServer:state"])["data"]["state"] == "offline"
        assert server.status() == {"stream": "offline"}
    finally:
        await manager.stop()


async def test_stream_state_resumes_where_a_dead_owner_left_it(configure_livestream):
    """A new manager (another worker after a failover) completes a start, keeps a live stream."""
    configure_livestream(STREAM_START_DELAY=1.0)
    redis = get_redis()
    await redis.hset(keys.stream_state("7"), mapping={"state": "starting", "since": time.time() - 5})
    await redis.hset(keys.stream_state("8"), mapping={"state": "live", "since": time.time() - 5})
    tabs = {uid: await tab(uid) for uid in ("7", "8")}
    managers = [UserStreamManager(uid, [StreamStateServer]) for uid in ("7", "8")]
    for manager in managers:
        manager.start()
    try:
        seven = [json.loads((await heard(tabs["7"]))["frame"])["data"]["state"] for _ in range(2)]
        assert seven == ["starting", "live"]  # its delay was over: completed at once
        assert json.loads((await heard(tabs["8"]))["frame"])["data"]["state"] == "live"
        assert await redis.hget(keys.stream_state("7"), "state") == "live"
    finally:
        for manager in managers:
            await manager.stop()


async def test_end_stream_during_starting_wins_over_the_pending_start(configure_livestream):
    configure_livestream(STREAM_START_DELAY=0.3, STREAM_END_DELAY=0.1)
    _pm, manager = await running("7", [StreamStateServer])
    server = manager.component("StreamStateServer")
    try:
        await server.on_command("go_live", {})
        await server.on_command("end_stream", {})
        await wait_until(lambda: server.state == "offline", 3, "offline")
        await asyncio.sleep(0.4)  # the start's delay is over: it must not go live
        assert await get_redis().hget(keys.stream_state("7"), "state") == "offline"
    finally:
        await manager.stop()


# -- per-user choices and live changes -------------------------------------------


def test_resolve_adjusts_the_defaults():
    defaults = ("a.A", "b.B")
    assert choices.resolve(defaults, {}) == ["a.A", "b.B"]
    assert choices.resolve(defaults, {"a.A": False}) == ["b.B"]
    assert choices.resolve(defaults, {"c.C": True, "b.B": True}) == ["a.A", "b.B", "c.C"]
    assert choices.resolve(defaults, {"c.C": False}) == ["a.A", "b.B"]
    assert choices.classes(["Echo", "no.such.Thing", "json.dumps"]) == [Echo]


async def test_apply_starts_and_stops_only_the_changed_components():
    manager = UserStreamManager("7", [ConsoleLogger, Echo])
    manager.start()
    await wait_until(lambda: manager.component("ConsoleLogger") is not None, 2, "running")
    logger = manager.component("ConsoleLogger")
    await Echo("7").emit("state", {}, sticky=True)
    try:
        started, stopped = await manager.apply([ConsoleLogger, StreamStateServer])
        assert (started, stopped) == (["StreamStateServer"], ["Echo"])
        assert manager.component("ConsoleLogger") is logger  # untouched, its counter goes on
        assert manager.supervisor("Echo") is None
        sticky = await get_redis().hgetall(keys.sticky("7"))  # the removed one's state is gone (the
        assert not [f for f in sticky if f.startswith("Echo:")]  # new one may have written its own)
        await wait_until(lambda: manager.component("StreamStateServer") is not None, 2, "started")
        assert await manager.apply([ConsoleLogger, StreamStateServer]) == ([], [])
    finally:
        await manager.stop()


async def test_a_chooser_decides_before_anything_starts_and_failing_means_the_defaults(caplog):
    async def only_echo(user_id: str) -> list[type[Component]]:
        return [Echo]

    async def broken(user_id: str) -> list[type[Component]]:
        raise RuntimeError("database down")

    chosen = UserStreamManager("7", [ConsoleLogger], choose=only_echo)
    fallback = UserStreamManager("8", [ConsoleLogger], choose=broken)
    for manager in (chosen, fallback):
        manager.start()
    try:
        await wait_until(lambda: chosen.component("Echo") and fallback.component("ConsoleLogger"), 2, "up")
        assert [c.name for c in chosen.children] == ["Echo"]
        assert "component choice not read" in caplog.text
    finally:
        await chosen.stop()
        await fallback.stop()


@pytest.mark.django_db(transaction=True)
async def test_for_user_reads_the_rows_in_one_batch(django_user_model):
    from asgiref.sync import sync_to_async

    from livestream.models import UserComponent

    user = await sync_to_async(django_user_model.objects.create)(username="u", email="u@x.y")
    name = "StreamStateServer"
    await sync_to_async(UserComponent.objects.create)(user=user, name=name, enabled=False)
    await sync_to_async(UserComponent.objects.create)(user=user, name="Echo")
    found = await asyncio.gather(choices.for_user(str(user.pk)), choices.for_user("999999"))
    # Issue 18 added the CloudflareManager to the defaults.
    assert found[0] == [ConsoleLogger, AlertManager, CloudflareManager, Echo]
    assert found[1] == [ConsoleLogger, StreamStateServer, AlertManager, CloudflareManager]


# -- settings ---------------------------------------------------------------------


def test_new_settings_are_validated():
    assert get_settings().COMMAND_MAX_BYTES == 4096
    validate_settings(LivestreamSettings())
    for bad in (
        {"COMMAND_MAX_BYTES": 10},
        {"COMMAND_RATE": -1},
        {"COMMAND_BURST": 0},
        {"COMMAND_TIMEOUT": 0},
        {"EVENT_SEND_BUFFER": 100},
        {"STREAM_START_DELAY": -1},
    ):
        with pytest.raises(ImproperlyConfigured, match=next(iter(bad))):
            validate_settings(LivestreamSettings(**bad))


@pytest.mark.django_db
def test_the_admin_validates_a_user_component_and_saving_announces_it(
    admin_client, django_user_model, monkeypatch, django_capture_on_commit_callbacks
):
    from livestream.models import UserComponent

    announced: list[str] = []
    monkeypatch.setattr(choices, "notify", announced.append)
    user = django_user_model.objects.create(username="s", email="s@x.y")
    url = "/admin/livestream/usercomponent/add/"
    assert admin_client.get(url).status_code == 200
    # Only registered names are accepted (a select of them); nothing typed is imported.
    bad = admin_client.post(url, {"user": user.pk, "name": "json.dumps", "enabled": "on"})
    assert bad.status_code == 200 and b"Select a valid choice" in bad.content
    missing = admin_client.post(url, {"user": user.pk, "name": "no.such.Thing"})
    assert b"Select a valid choice" in missing.content
    assert not UserComponent.objects.exists() and announced == []
    name = "StreamStateServer"
    with django_capture_on_commit_callbacks(execute=True):  # announced after commit only
        ok = admin_client.post(url, {"user": user.pk, "name": name})  # enabled unticked: disabled
    assert ok.status_code == 302
    row = UserComponent.objects.get()
    assert (row.name, row.enabled, str(row)) == (name, False, f"StreamStateServer off for user {user.pk}")
    with django_capture_on_commit_callbacks(execute=True):
        row.delete()
    assert announced == [str(user.pk), str(user.pk)]  # saved, deleted: the owner worker is told each time
