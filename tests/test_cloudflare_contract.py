"""The Cloudflare Stream contract server refuses what the API refuses (devtools/cloudflare_api.py).

The backend's tests can only fail on a wrong client call if the server checks requests:
these pin that it does (raw HTTP, no SDK), so loosening it is caught here.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devtools.cloudflare_api import FakeCloudflare


@pytest.fixture
def api() -> Iterator[FakeCloudflare]:
    server = FakeCloudflare().serve()
    yield server
    server.close()


def call(api: FakeCloudflare, method: str, path: str, token: str | None = None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or api.token}", **kwargs.pop("headers", {})}
    return httpx.request(method, f"{api.base_url}/accounts/{api.account_id}{path}", headers=headers, **kwargs)


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    return body["errors"][0]["message"]


def test_envelope_and_documented_shapes(api):
    created = call(api, "POST", "/stream/live_inputs", json={"meta": {"name": "x"}})
    assert created.status_code == 200
    body = created.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    live = body["result"]
    assert set(live) >= {"uid", "rtmps", "srt", "webRTC", "status", "meta", "created", "modified"}
    assert live["rtmps"]["url"] == "rtmps://live.cloudflare.com:443/live/" and live["rtmps"]["streamKey"]
    assert live["status"] is None
    uid = live["uid"]
    out = call(
        api, "POST", f"/stream/live_inputs/{uid}/outputs", json={"url": "rtmp://a/b", "streamKey": "k"}
    )
    assert out.json()["result"] == {
        "uid": out.json()["result"]["uid"],
        "url": "rtmp://a/b",
        "streamKey": "k",
        "enabled": True,
    }
    listed = call(api, "GET", f"/stream/live_inputs/{uid}/outputs").json()["result"]
    assert [o["streamKey"] for o in listed] == ["k"]
    assert call(api, "DELETE", f"/stream/live_inputs/{uid}").status_code == 200
    assert call(api, "GET", f"/stream/live_inputs/{uid}").status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"url": "rtmp://a/b"}, "streamKey is required"),
        ({"url": "rtmp://a/b", "stream_key": "k", "streamKey": "k"}, "unknown field 'stream_key'"),
        ({"url": "http://a/b", "streamKey": "k"}, "url must be an rtmp://, rtmps:// or srt:// URL"),
        ({"url": "rtmp://a/b", "streamKey": ""}, "streamKey must not be empty"),
        ({"url": "rtmp://a/b", "streamKey": "k", "enabled": "yes"}, "enabled has the wrong type"),
    ],
)
def test_wrong_output_bodies_get_400(api, body, message):
    uid = call(api, "POST", "/stream/live_inputs", json={}).json()["result"]["uid"]
    response = call(api, "POST", f"/stream/live_inputs/{uid}/outputs", json=body)
    assert response.status_code == 400 and error_of(response) == message


def test_auth_account_json_and_injected_errors(api):
    assert call(api, "GET", "/stream/live_inputs", token="wrong").status_code == 401
    response = httpx.get(f"{api.base_url}/accounts/{api.account_id}/stream/live_inputs")
    assert response.status_code == 401 and error_of(response) == "Authentication error"
    other = httpx.get(
        f"{api.base_url}/accounts/someone-else/stream/live_inputs",
        headers={"Authorization": f"Bearer {api.token}"},
    )
    assert other.status_code == 403
    not_json = call(api, "POST", "/stream/live_inputs", content=b"{}", headers={"Content-Type": "text/plain"})
    assert not_json.status_code == 400
    assert call(api, "POST", "/stream/live_inputs", json={"recordings": {}}).status_code == 400
    api.fail_next(429, retry_after=7)
    limited = call(api, "GET", "/stream/live_inputs")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert call(api, "GET", "/stream/live_inputs").status_code == 200
