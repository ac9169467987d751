"""The staff presence debug page (/admin/livestream/debug/) and its stop/restart actions.

The HTTP side runs through Django's test client against the real Redis; the
worker side runs the real PresenceManager in an in-process runworker over the
real channel layer. (Over 300 lines: one test per action and per refusal of the page.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client
from django.urls import reverse

from devtools.clients import login, open_socket, signup
from devtools.processes import Stack, wait_until
from livestream.conf import get_settings
from livestream.observe.state import read_state, run_sync
from livestream.ownership.leases import LeaseStore
from livestream.presence.store import PresenceStore
from livestream.timers.store import TimerStore
from livestream.worker.presence_manager import PresenceManager
from tests.staff_helpers import connect, disconnect, publish_fake_worker, status, ticks

SECRET_EMAIL = "watched-user@example.com"
WORKER_ID = "debugpage-worker-7f3a"


@pytest.fixture(autouse=True)
def fast(configure_livestream, settings):
    configure_livestream(RECONCILE_INTERVAL=0.1, LEASE_TTL=5.0)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # quick test users


@pytest.fixture
def seeded():
    """User 1 present with a manager on a (fake, live) worker."""

    async def seed(client):
        meta = {"email": SECRET_EMAIL, "joined_at": int(time.time()), "ref": "tab"}
        await PresenceStore(client=client).track("1", meta)
        await publish_fake_worker(client, WORKER_ID, {"1": status(time.time() - 12, count=12)})

    run_sync(seed)


def page_urls() -> list[str]:
    return [
        reverse("admin:livestream_debug"),
        reverse("admin:livestream_debug_panel"),
        reverse("admin:livestream_debug_state"),
    ]


def action_url(user_id: str, action: str) -> str:
    return reverse("admin:livestream_debug_action", args=[user_id, action])


def worker_channel_messages(timeout: float = 0.3) -> list[dict]:
    """Everything waiting on the presence-manager channel."""

    async def drain() -> list[dict]:
        layer, received = get_channel_layer(), []
        while True:
            try:
                received.append(await asyncio.wait_for(layer.receive(get_settings().WORKER_CHANNEL), timeout))
            except TimeoutError:
                return received

    return async_to_sync(drain)()


def manager_rows(html: str) -> list[str]:
    table = re.search(r'<table id="managers">(.*?)</table>', html, re.S)
    assert table, "no managers table"
    return re.findall(r'<tr data-user-id="([^"]+)">', table.group(1))


# -- who may see it ------------------------------------------------------------


def assert_admin_login(response, url: str) -> None:
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login")), response.url
    assert SECRET_EMAIL not in response.content.decode() and WORKER_ID not in response.content.decode()


@pytest.mark.django_db
def test_anonymous_gets_the_admin_login_never_the_data(client, seeded):
    assert reverse("admin:livestream_debug") == "/admin/livestream/debug/"
    for url in page_urls():
        assert_admin_login(client.get(url), url)
        followed = client.get(url, follow=True)
        assert SECRET_EMAIL not in followed.content.decode() and WORKER_ID not in followed.content.decode()
    assert_admin_login(client.post(action_url("1", "stop")), "stop")
    assert worker_channel_messages() == []


@pytest.mark.django_db
def test_a_signed_in_non_staff_user_gets_the_admin_login(client, django_user_model, seeded):
    user = django_user_model.objects.create_user("plain", "plain@example.com", "pw-123456789")
    client.force_login(user)
    for url in page_urls():
        assert_admin_login(client.get(url), url)
    assert_admin_login(client.post(action_url("1", "restart")), "restart")
    assert worker_channel_messages() == []


@pytest.mark.django_db
def test_staff_see_each_manager_as_a_row(client, django_user_model, seeded):
    staff = django_user_model.objects.create_user(
        "staffer", "staff@example.com", "pw-123456789", is_staff=True
    )
    client.force_login(staff)  # staff, not superuser, and no model permissions
    response = client.get(reverse("admin:livestream_debug"))
    assert response.status_code == 200
    html = response.content.decode()
    assert manager_rows(html) == ["1"]
    assert SECRET_EMAIL in html and WORKER_ID in html
    assert "ConsoleLogger" in html and "running" in html
    assert html.count('id="presence-debug"') == 1  # the live-refresh container (unique id)
    assert reverse("admin:livestream_debug_panel") in html

    panel = client.get(reverse("admin:livestream_debug_panel")).content.decode()
    assert manager_rows(panel) == ["1"] and "<html" not in panel

    data = client.get(reverse("admin:livestream_debug_state")).json()
    assert data["managers"]["1"]["worker"] == WORKER_ID
    assert data["managers"]["1"]["components"]["ConsoleLogger"] == {
        "state": "running",
        "restarts": 0,
        "count": 12,
    }
    assert data["totals"]["running_managers"] == 1 and data["presence"]["1"]["metas"][0]["ref"] == "tab"


@pytest.mark.django_db
def test_the_admin_index_links_the_debug_page(admin_client):
    html = admin_client.get(reverse("admin:index")).content.decode()
    assert 'href="/admin/livestream/debug/"' in html
    assert "Presence debug" in html


@pytest.mark.django_db
def test_empty_and_unreachable_states_render(admin_client, settings):
    assert manager_rows(admin_client.get(reverse("admin:livestream_debug")).content.decode()) == []
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = admin_client.get(reverse("admin:livestream_debug_panel"))
    assert response.status_code == 200
    assert "Could not read the shared state from Redis: ConnectionError" in response.content.decode()
    assert admin_client.get(reverse("admin:livestream_debug_state")).status_code == 503


# -- actions: HTTP side --------------------------------------------------------


@pytest.mark.django_db
def test_actions_need_csrf(django_user_model, seeded):
    staff = django_user_model.objects.create_user(
        "staffer", "staff@example.com", "pw-123456789", is_staff=True
    )
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff)
    assert browser.post(action_url("1", "stop")).status_code == 403
    assert worker_channel_messages() == []
    browser.get(reverse("admin:livestream_debug"))  # sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    response = browser.post(action_url("1", "stop"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response.url == reverse("admin:livestream_debug")
    assert worker_channel_messages() == [{"type": "manager.stop", "user_id": "1", "by": str(staff.pk)}]


@pytest.mark.django_db
def test_stop_and_restart_are_sent_and_logged_with_the_staff_id(admin_client, admin_user, caplog, seeded):
    caplog.set_level(logging.INFO, logger="livestream")
    response = admin_client.post(action_url("1", "stop"), follow=True)
    assert "Asked the workers to stop the manager of user 1." in response.content.decode()
    admin_client.post(action_url("1", "restart"))
    assert worker_channel_messages() == [
        {"type": "manager.stop", "user_id": "1", "by": str(admin_user.pk)},
        {"type": "manager.restart", "user_id": "1", "by": str(admin_user.pk)},
    ]
    logged = [r.getMessage() for r in caplog.records if r.name == "livestream.views"]
    assert logged == [
        f"[admin] staff {admin_user.pk} (admin) asked to stop the manager of user 1",
        f"[admin] staff {admin_user.pk} (admin) asked to restart the manager of user 1",
    ]


@pytest.mark.django_db
def test_actions_are_post_only_and_known_only(admin_client):
    assert admin_client.get(action_url("1", "stop")).status_code == 405
    assert admin_client.post(action_url("1", "explode")).status_code == 404
    assert worker_channel_messages() == []


# -- actions: worker side ------------------------------------------------------


@pytest.fixture
def info_logs(caplog):
    caplog.set_level(logging.INFO, logger="livestream")
    return caplog


def logged(caplog, pattern: str) -> int:
    return sum(1 for r in caplog.records if re.fullmatch(pattern, r.getMessage()))


async def wait_log(caplog, pattern: str, n: int = 1, timeout: float = 5) -> None:
    await wait_until(lambda: logged(caplog, pattern) >= n, timeout, f"{n}x {pattern!r}")


async def running(caplog, user_id: str) -> None:
    """The join was handled and the manager runs (a tick may have started it before the diff came)."""
    await wait_log(caplog, rf"\[PresenceManager\] presence join: {user_id}")
    await wait_log(caplog, rf"\[PresenceManager\] UserStreamManager started: {user_id}")


async def staff(action: str, user_id: str, by: str = "42") -> None:
    message = {"type": f"manager.{action}", "user_id": user_id, "by": by}
    await get_channel_layer().send(get_settings().WORKER_CHANNEL, message)


async def test_stop_of_a_present_user_holds_the_manager_down_until_their_next_join(
    run_worker, info_logs, aredis
):
    worker = await run_worker()
    pm = worker.manager
    await connect("1", "a")
    await running(info_logs, "1")
    await staff("stop", "1")
    await wait_log(
        info_logs, r"\[PresenceManager\] staff 42 stopped the manager of 1; held until their next join"
    )
    assert "1" not in pm.local.managers
    assert logged(info_logs, r"\[PresenceManager\] UserStreamManager stopped: 1") == 1
    await ticks(pm.worker_id, 5, aredis)  # reconcile passes that would restart a present user
    assert "1" not in pm.local.managers and logged(info_logs, r".*UserStreamManager started: 1") == 1
    s = await read_state()
    assert "1" in s.presence and s.managers == {} and s.held == {"1": "42"}

    await connect("1", "b")  # a new tab (or a reload): the stop ends
    await wait_log(info_logs, r".*UserStreamManager started: 1", n=2)
    s = await wait_until(lambda: _state_with_manager("1"), 3, "manager 1 published again")
    assert s.held == {}


async def _state_with_manager(user_id: str):
    s = await read_state()
    return s if user_id in s.managers else None


async def test_stop_of_an_absent_user_stops_now_and_cancels_the_cleanup(
    run_worker, info_logs, configure_livestream
):
    configure_livestream(CLEANUP_TIMEOUT=30)
    worker = await run_worker()
    await connect("1", "a")
    await running(info_logs, "1")
    await disconnect("1", "a")
    await wait_log(info_logs, r".*cleanup scheduled: 1 in 30s")
    await staff("stop", "1", by="7")
    await wait_log(info_logs, r"\[PresenceManager\] staff 7 stopped the manager of 1")
    assert worker.manager.local.managers == {}
    assert await LeaseStore("x").owner("1") is None
    s = await read_state()
    assert s.managers == {} and s.held == {}
    # The cleanup timer stays harmless: when it fires there is nothing left to stop.
    assert set(await TimerStore().pending()) == {"cleanup:1"}


async def test_a_hold_ends_after_staff_stop_hold_seconds(run_worker, info_logs, configure_livestream):
    configure_livestream(STAFF_STOP_HOLD=0.5)
    worker = await run_worker()
    await connect("1", "a")
    await running(info_logs, "1")
    asked_at = time.monotonic()  # the hold is set after this, so it cannot end sooner than 0.5 s later
    await staff("stop", "1")
    await wait_log(info_logs, r".*staff 42 stopped the manager of 1; held.*")
    assert "1" not in worker.manager.local.managers
    await wait_log(info_logs, r".*UserStreamManager started: 1", n=2)  # the tick claims them again
    assert 0.5 <= time.monotonic() - asked_at < 0.5 + 2.0


async def test_a_held_user_who_leaves_is_forgotten_at_cleanup(run_worker, info_logs, configure_livestream):
    configure_livestream(CLEANUP_TIMEOUT=0.2)
    await run_worker()
    await connect("1", "a")
    await running(info_logs, "1")
    await staff("stop", "1")
    await wait_log(info_logs, r".*staff 42 stopped the manager of 1; held.*")
    assert await LeaseStore("x").owner("1") == "held-by-staff:42"
    await disconnect("1", "a")
    await wait_until(lambda: _is_none(LeaseStore("x").owner("1")), 3, "the hold dropped at cleanup")
    assert (await read_state()).held == {}


async def _is_none(coro) -> bool:
    return await coro is None


async def test_restart_gives_a_fresh_manager_now(run_worker, info_logs):
    worker = await run_worker()
    await connect("1", "a")
    await running(info_logs, "1")
    first = worker.manager.local.managers["1"]
    await staff("restart", "1")
    await wait_log(info_logs, r"\[PresenceManager\] staff 42 restarted the manager of 1")
    second = worker.manager.local.managers["1"]
    assert second is not first and first.stopped and not second.stopped
    assert second.started_at > first.started_at
    assert logged(info_logs, r".*UserStreamManager stopped: 1") == 1
    assert logged(info_logs, r".*UserStreamManager started: 1") == 2
    assert await LeaseStore("x").owner("1") == worker.manager.worker_id


async def test_restart_ends_a_hold_and_is_a_no_op_for_nobody(run_worker, info_logs):
    worker = await run_worker()
    await connect("1", "a")
    await running(info_logs, "1")
    await staff("stop", "1")
    await wait_log(info_logs, r".*staff 42 stopped the manager of 1; held.*")
    await staff("restart", "1")
    await wait_log(info_logs, r".*staff 42 restarted the manager of 1")
    assert "1" in worker.manager.local.managers
    assert (await read_state()).held == {}
    await staff("restart", "99")
    await wait_log(info_logs, r"\[PresenceManager\] staff 42: no manager of 99 to restart")
    assert "99" not in worker.manager.local.managers


async def test_a_worker_that_is_not_the_owner_forwards_to_the_owner(run_worker, info_logs):
    owner = (await run_worker()).manager
    await connect("1", "a")
    await running(info_logs, "1")
    other = PresenceManager("other-worker")  # a second worker that received the request
    await other.start()
    try:
        await other.handle({"type": "manager.stop", "user_id": "1", "by": "42"})
        await wait_log(info_logs, r".*staff 42 stopped the manager of 1; held until their next join")
        assert owner.local.managers == {} and other.local.managers == {}
        await other.handle({"type": "manager.restart", "user_id": "1", "by": "42"})  # held: nobody owns it
        await wait_log(info_logs, r".*staff 42 restarted the manager of 1")
        assert list(other.local.managers) == ["1"] and owner.local.managers == {}
    finally:
        await other.shutdown()


async def test_malformed_staff_messages_are_dropped(run_worker, info_logs):
    worker = await run_worker()
    await connect("1", "a")
    await running(info_logs, "1")
    manager = worker.manager.local.managers["1"]
    layer, channel = get_channel_layer(), get_settings().WORKER_CHANNEL
    for bad in (
        {"type": "manager.stop", "user_id": "1"},
        {"type": "manager.stop", "user_id": "1", "by": ""},
        {"type": "manager.restart", "user_id": 1, "by": "42"},
        {"type": "manager.restart", "user_id": "x" * 65, "by": "42"},
    ):
        await layer.send(channel, bad)
    await wait_log(info_logs, r"\[PresenceManager\] dropped malformed manager\.(stop|restart): .*", n=4)
    assert worker.manager.local.managers["1"] is manager


# -- across real processes -----------------------------------------------------


@pytest.mark.processes
async def test_staff_stop_across_daphne_and_a_real_worker(tmp_path, migrated_db_template, key_prefix):
    """Debug page, stop action, presence_debug and /metrics, each from its own process."""
    token = "e2e-metrics-token-0123456789abcdef"
    stack = Stack(
        tmp_path,
        migrated_db_template,
        key_prefix,
        env={"LIVESTREAM_METRICS_ENABLED": "1", "LIVESTREAM_METRICS_TOKEN": token},
    )
    try:
        web = stack.start_daphne()
        worker = stack.start_worker()
        await worker.log.wait_for(r"\[PresenceManager\] worker \S+ started", timeout=30)
        await asyncio.to_thread(
            manage,
            stack,
            "createsuperuser",
            "--noinput",
            "--username",
            "boss",
            "--email",
            "boss@example.com",
            DJANGO_SUPERUSER_PASSWORD="boss-pass-123456",
        )
        staff_session = await login(web.url, "boss@example.com", "boss-pass-123456")
        user_session = await signup(web.url, "streamer@example.com", "a-long-pass-123")
        tab = await open_socket(web.url, user_session)
        uid = (await worker.log.wait_for(r"UserStreamManager started: (\d+)\n", timeout=10)).group(1)

        async with httpx.AsyncClient(
            base_url=web.url, cookies={"sessionid": staff_session}, timeout=30
        ) as http:

            async def rows() -> list[str]:
                return manager_rows((await http.get("/admin/livestream/debug/")).text)

            await wait_until(lambda: _eq(rows(), [uid]), 10, "the user's row on the debug page")
            metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
            assert "streampai_running_managers 1.0" in metrics.text

            page = await http.get("/admin/livestream/debug/")
            csrf = http.cookies["csrftoken"]
            response = await http.post(
                f"/admin/livestream/debug/{uid}/stop/",
                data={"csrfmiddlewaretoken": csrf},
                headers={"Referer": web.url + "/admin/livestream/debug/"},
            )
            assert page.status_code == 200 and response.status_code == 302
            await worker.log.wait_for(
                rf"\[PresenceManager\] staff \d+ stopped the manager of {uid}; held until their next join\n",
                10,
            )
            await wait_until(lambda: _eq(rows(), []), 10, "the row gone")

        out = await asyncio.to_thread(manage, stack, "presence_debug", "--json")
        data = json.loads(out)
        assert set(data) == {"presence", "managers", "pending_cleanups"}
        assert list(data["presence"]) == [uid] and data["managers"] == {}
        await tab.close()
    finally:
        stack.stop_all()


def manage(stack: Stack, *args: str, **env: str) -> str:
    """Run a management command against the stack's database and Redis namespace."""
    return stack.manage(*args, **env)


async def _eq(coro, expected) -> bool:
    return await coro == expected
