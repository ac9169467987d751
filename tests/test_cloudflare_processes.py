"""The Cloudflare backend end to end: real daphne and runworker with BROADCAST_BACKEND
"cloudflare", the SDK pointed at the Cloudflare Stream contract server
(devtools/cloudflare_api.py), webhooks signed as Cloudflare signs them, and a real tab.

Cloudflare itself is not reachable here; everything on our side is the real thing.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from devtools.clients import create_accounts
from devtools.cloudflare_api import FakeCloudflare, live_input_notification, sign_webhook
from devtools.processes import BASE_DIR, PYTHON, Stack, base_env, start_worker_ready, wait_until
from livestream import logformats
from streampai.startup import EXIT_STATUS
from tests.tabs import Tab

pytestmark = [pytest.mark.processes]

CM = "CloudflareManager"
SSS = "StreamStateServer"
SECRET = "whsec-process-test-0123456789"


@pytest.fixture
def api() -> Iterator[FakeCloudflare]:
    server = FakeCloudflare().serve()
    yield server
    server.close()


def cloudflare_env(api: FakeCloudflare) -> dict[str, str]:
    return {
        "LIVESTREAM_BROADCAST_BACKEND": "cloudflare",
        "LIVESTREAM_BROADCAST_REQUIRED": "1",
        "LIVESTREAM_CLOUDFLARE_ACCOUNT_ID": api.account_id,
        "LIVESTREAM_CLOUDFLARE_API_TOKEN": api.token,
        "LIVESTREAM_CLOUDFLARE_API_BASE_URL": api.base_url,
        "LIVESTREAM_CLOUDFLARE_WEBHOOK_SECRET": SECRET,
        "LIVESTREAM_CLOUDFLARE_POLL_INTERVAL": "0.3",
        "LIVESTREAM_INPUT_POLL_INTERVAL": "0.5",
        "LIVESTREAM_STREAM_START_DELAY": "0.2",
        "LIVESTREAM_STREAM_END_DELAY": "0.2",
    }


def last(tab: Tab, event: str) -> dict | None:
    found = tab.named(CM, event)
    return found[-1] if found else None


def input_of(tab: Tab) -> str | None:
    found = last(tab, "input")
    return found["state"] if found else None


def outputs_of(tab: Tab) -> dict[str, dict]:
    found = last(tab, "outputs")
    return {o["id"]: o for o in found["outputs"]} if found else {}


def ok(reply: dict) -> dict:
    assert reply["ok"], reply
    return reply["result"]


async def send_webhook(base_url: str, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Webhook-Signature"] = signature
    async with httpx.AsyncClient() as client:
        return await client.post(f"{base_url}/hooks/cloudflare/", content=body, headers=headers)


async def test_cloudflare_ingest_webhook_outputs_and_polling(tmp_path, migrated_db_template, key_prefix, api):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env=cloudflare_env(api))
    try:
        account = create_accounts(stack, ["streamer@example.com"])["streamer@example.com"]
        user = account.user_id
        web = stack.start_daphne()
        worker = await start_worker_ready(stack)
        tab = await Tab.open(web.url, account.session)

        # The Stream page's ingest is the user's Cloudflare live input, created on first use: a
        # manager's start makes no API call; the page asks (create_key) when it has no key.
        await tab.until(lambda: last(tab, "ingest") and input_of(tab), 15, "ingest + input")
        assert last(tab, "ingest")["key_masked"] is None and not api.inputs
        ok(await tab.command(CM, "create_key"))
        info = await tab.until(lambda: last(tab, "ingest")["key_masked"] and last(tab, "ingest"), 10, "key")
        assert info["available"] and info["backend"] == "cloudflare", info
        [uid] = api.inputs
        assert info["server_url"] == api.inputs[uid]["rtmps"]["url"]
        key = api.inputs[uid]["rtmps"]["streamKey"]
        assert info["key_masked"] == "••••" + key[-4:]
        assert ok(await tab.command(CM, "show_key"))["key"] == key
        assert input_of(tab) == "disconnected"

        # Unsigned and badly signed webhooks are refused at daphne (never a 5xx).
        body = live_input_notification(uid, "live_input.connected")
        assert (await send_webhook(web.url, body, None)).status_code == 401
        assert (await send_webhook(web.url, body, sign_webhook("wrong", body))).status_code == 401
        stale = sign_webhook(SECRET, body, int(time.time()) - 3600)
        assert (await send_webhook(web.url, body, stale)).status_code == 401
        assert input_of(tab) == "disconnected"

        # OBS connects to Cloudflare: its signed webhook -> the tab shows "input connected" within 1 s.
        api.set_status(uid, "connected")
        sent = time.monotonic()
        response = await send_webhook(web.url, body, sign_webhook(SECRET, body))
        assert response.status_code == 200, response.text
        await tab.until(lambda: input_of(tab) == "connected", 5, "input connected")
        assert time.monotonic() - sent < 1.0
        await worker.log.wait_for(re.escape(logformats.INPUT_CHANGED % (user, "connected")), 5)

        # An output, then go_live: a live output at Cloudflare, enabled, with the destination.
        out = ok(
            await tab.command(
                CM, "add_output", {"name": "A", "url": "rtmp://127.0.0.1:1935/app", "key": "dest-secret-a"}
            )
        )["id"]
        ok(await tab.command(SSS, "go_live"))
        await wait_until(lambda: api.outputs.get(uid), 10, "live output created")
        [created] = api.outputs[uid].values()
        assert (created["url"], created["streamKey"], created["enabled"]) == (
            "rtmp://127.0.0.1:1935/app",
            "dest-secret-a",
            True,
        )
        await tab.until(lambda: outputs_of(tab).get(out, {}).get("state") == "live", 10, "output live")
        await worker.log.wait_for(re.escape(logformats.OUTPUT_LIVE % (user, out)), 5)

        # end_stream: the live output is gone at Cloudflare within 2 s.
        ended = time.monotonic()
        ok(await tab.command(SSS, "end_stream"))
        await wait_until(lambda: api.outputs.get(uid) == {}, 5, "live output deleted")
        assert time.monotonic() - ended < 2.5
        await tab.until(lambda: outputs_of(tab).get(out, {}).get("state") == "off", 5, "output off")

        # A lost "disconnected" webhook: polling notices it (two polls agree).
        api.set_status(uid, "client_disconnect")
        await tab.until(lambda: input_of(tab) == "disconnected", 10, "input disconnected by polling")

        # Webhook -> the tab's "input" event, 20 times (connect and disconnect alternating).
        latencies = []
        for n in range(20):
            state = "connected" if n % 2 == 0 else "disconnected"
            api.set_status(uid, "connected" if state == "connected" else "client_disconnect")
            note = live_input_notification(uid, f"live_input.{state}")
            sent = time.monotonic()
            assert (await send_webhook(web.url, note, sign_webhook(SECRET, note))).status_code == 200
            await tab.until(lambda s=state: input_of(tab) == s, 5, f"input {state}")
            latencies.append(time.monotonic() - sent)
        latencies.sort()
        print(
            f"webhook -> tab input event: p50 {latencies[9] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
        )
        assert latencies[-1] < 1.0, latencies

        # Keys and secrets never reach a log.
        for name, text in stack.logs().items():
            for secret in (key, "dest-secret-a", api.token, SECRET):
                assert secret not in text, f"a secret is in {name}'s log"
        await tab.close()
    finally:
        stack.stop_all()


def _manage_check(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", "check"],
        cwd=BASE_DIR,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_process_refuses_to_start_without_the_cloudflare_settings_and_names_them():
    done = _manage_check(
        LIVESTREAM_BROADCAST_BACKEND="cloudflare", CLOUDFLARE_API_TOKEN="tok-not-to-be-shown"
    )
    assert done.returncode == EXIT_STATUS, done.stderr
    assert "CLOUDFLARE_ACCOUNT_ID must be set when BROADCAST_BACKEND is 'cloudflare'" in done.stderr
    assert "CLOUDFLARE_WEBHOOK_SECRET must be set" in done.stderr
    assert "tok-not-to-be-shown" not in done.stdout + done.stderr
    # Cloudflare's own environment names are read (as LIVESTREAM_CLOUDFLARE_* are).
    done = _manage_check(
        LIVESTREAM_BROADCAST_BACKEND="cloudflare",
        CLOUDFLARE_ACCOUNT_ID="acc",
        CLOUDFLARE_API_TOKEN="tok",
        CLOUDFLARE_WEBHOOK_SECRET="whsec",
    )
    assert done.returncode == 0, done.stderr
