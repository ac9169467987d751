"""A local stand-in for the Cloudflare Stream API, for contract tests (issue 18).

Cloudflare cannot be reached from here, so the tests point the official ``cloudflare``
SDK (its ``base_url``) at this server. It implements the documented endpoints the
backend calls, with the documented request and response shapes, and checks requests
the way the API does, so a wrong client call fails the test instead of passing:

    POST   /accounts/{acc}/stream/live_inputs                      create a live input
    GET    /accounts/{acc}/stream/live_inputs/{uid}                one live input
    PUT    /accounts/{acc}/stream/live_inputs/{uid}                update it
    DELETE /accounts/{acc}/stream/live_inputs/{uid}                delete it (and its outputs)
    GET    /accounts/{acc}/stream/live_inputs/{uid}/outputs        its outputs
    POST   /accounts/{acc}/stream/live_inputs/{uid}/outputs        add one {url, streamKey, enabled?}
    PUT    /accounts/{acc}/stream/live_inputs/{uid}/outputs/{id}   {enabled}
    DELETE /accounts/{acc}/stream/live_inputs/{uid}/outputs/{id}

Every JSON answer is Cloudflare's envelope ``{"success", "errors", "messages",
"result"}``; errors carry ``[{"code", "message"}]``. A request without
``Authorization: Bearer <token>`` (or with another token) gets 401; another account's
path 403; an unknown input or output 404; a body that is not a JSON object, lacks a
required field, has a field of the wrong type or one the API does not know, 400.

Test controls: ``fail_next(status, count, retry_after)`` answers the next requests with
an error (429 with Retry-After, 500 ...); ``set_status(uid, "connected")`` is what
Cloudflare reports once OBS publishes; ``drop_input(uid)`` deletes an input behind the
client's back (as the dashboard would); ``requests`` records every call (method, path,
JSON body) for assertions. ``sign_webhook`` builds a signed live-input notification.

The stdlib's ThreadingHTTPServer in a thread: nothing to install, and the SDK's real
httpx transport talks to it over TCP.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The documented values of a live input's ``status`` (null: never connected).
LIVE_INPUT_STATUSES = {
    None,
    "connected",
    "reconnected",
    "reconnecting",
    "client_disconnect",
    "ttl_exceeded",
    "failed_to_connect",
    "failed_to_reconnect",
    "new_configuration_accepted",
}
# Body fields each endpoint accepts (the API's camelCase names) -> allowed JSON types.
_INPUT_FIELDS: dict[str, tuple[type, ...]] = {
    "defaultCreator": (str,),
    "deleteRecordingAfterDays": (int, float, type(None)),
    "enabled": (bool,),
    "meta": (dict,),
    "preferLowLatency": (bool,),
    "recording": (dict,),
}
_OUTPUT_CREATE_FIELDS: dict[str, tuple[type, ...]] = {"url": (str,), "streamKey": (str,), "enabled": (bool,)}
_OUTPUT_URL = re.compile(r"^(rtmps?|srt)://[^\s/]+")
_PATH = re.compile(
    r"^/client/v4/accounts/(?P<acc>[^/]+)/stream/live_inputs"
    r"(?:/(?P<uid>[^/]+)(?:/(?P<outputs>outputs)(?:/(?P<out>[^/]+))?)?)?/?$"
)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def envelope(result: Any = None, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"success": not errors, "errors": errors or [], "messages": [], "result": result}


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    status: int


@dataclass
class FakeCloudflare:
    """The API's state and rules; ``serve()`` puts it on a free local port."""

    account_id: str = "acc0123456789abcdef0123456789abcd"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _failures: list[tuple[int, float | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connections: set[socket.socket] = field(default_factory=set)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    # --- test controls ---
    @property
    def base_url(self) -> str:
        assert self._server is not None, "serve() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/client/v4"

    def fail_next(self, status: int, count: int = 1, retry_after: float | None = None) -> None:
        """Answer the next ``count`` requests with ``status`` (429 carries Retry-After)."""
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def set_status(self, uid: str, status: str | None) -> None:
        assert status in LIVE_INPUT_STATUSES, status
        with self._lock:
            self.inputs[uid]["status"] = status

    def drop_input(self, uid: str) -> None:
        with self._lock:
            self.inputs.pop(uid, None)
            self.outputs.pop(uid, None)

    def calls(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def serve(self, port: int = 0) -> FakeCloudflare:
        """Listen on 127.0.0.1:``port`` (0: a free one; a closed server's port to bring it back)."""
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests
                pass

            def setup(self) -> None:
                super().setup()
                with api._lock:
                    api._connections.add(self.connection)

            def finish(self) -> None:
                with api._lock:
                    api._connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                api._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-cloudflare", daemon=True
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None, "serve() first"
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop listening (Cloudflare unreachable); serve(port) brings it back."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            # Keep-alive connections would go on being served by their threads.
            with self._lock:
                connections, self._connections = list(self._connections), set()
            for connection in connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    # --- the HTTP side ---
    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        method = handler.command
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        payload: dict[str, Any] | None
        status, payload, headers = 500, envelope(errors=[{"code": 10000, "message": "internal"}]), {}
        body: Any = None
        try:
            body = self._parse_body(method, handler, raw)
            with self._lock:
                status, result = self._route(method, handler.path, handler.headers.get("Authorization"), body)
            payload = envelope(result) if result is not _EMPTY else None
        except ApiError as exc:
            status, payload, headers = (
                exc.status,
                envelope(errors=[{"code": exc.code, "message": exc.message}]),
                exc.headers,
            )
        with self._lock:
            self.requests.append(Recorded(method, handler.path, body, status))
        data = b"" if payload is None else json.dumps(payload).encode()
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if payload is not None:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _parse_body(method: str, handler: BaseHTTPRequestHandler, raw: bytes) -> Any:
        if method not in {"POST", "PUT", "PATCH"}:
            return None
        if not (handler.headers.get("Content-Type") or "").startswith("application/json"):
            raise ApiError(400, 10005, "Content-Type must be application/json")
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, 10005, "body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, 10005, "body must be a JSON object")
        return body

    def _route(self, method: str, path: str, authorization: str | None, body: Any) -> tuple[int, Any]:
        if self._failures:
            status, retry_after = self._failures.pop(0)
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            message = "rate limited" if status == 429 else "injected failure"
            raise ApiError(status, 971 if status == 429 else 10000, message, headers)
        if authorization != f"Bearer {self.token}":
            raise ApiError(401, 10000, "Authentication error")
        match = _PATH.match(path.split("?", 1)[0])
        if match is None:
            raise ApiError(404, 7003, f"No route for that URI: {method} {path}")
        if match["acc"] != self.account_id:
            raise ApiError(403, 10000, "Authentication error")
        uid, out = match["uid"], match["out"]
        if uid is None:
            if method == "POST":
                return 200, self._create_input(body)
            if method == "GET":
                return 200, {"liveInputs": list(self.inputs.values()), "range": 0, "total": len(self.inputs)}
            raise ApiError(405, 10000, "method not allowed")
        live_input = self.inputs.get(uid)
        if live_input is None:
            raise ApiError(404, 10003, "live input not found")
        if match["outputs"] is None:
            return self._input_call(method, uid, live_input, body)
        return self._output_call(method, uid, out, body)

    def _input_call(self, method: str, uid: str, live_input: dict[str, Any], body: Any) -> tuple[int, Any]:
        if method == "GET":
            return 200, live_input
        if method == "PUT":
            live_input.update(_checked(body, _INPUT_FIELDS, required=()))
            live_input["modified"] = _now()
            return 200, live_input
        if method == "DELETE":
            del self.inputs[uid]
            self.outputs.pop(uid, None)
            return 200, _EMPTY
        raise ApiError(405, 10000, "method not allowed")

    def _output_call(self, method: str, uid: str, out: str | None, body: Any) -> tuple[int, Any]:
        outputs = self.outputs.setdefault(uid, {})
        if out is None:
            if method == "GET":
                return 200, list(outputs.values())
            if method == "POST":
                fields = _checked(body, _OUTPUT_CREATE_FIELDS, required=("url", "streamKey"))
                if not fields["streamKey"]:
                    raise ApiError(400, 10005, "streamKey must not be empty")
                if not _OUTPUT_URL.match(fields["url"]):
                    raise ApiError(400, 10005, "url must be an rtmp://, rtmps:// or srt:// URL")
                created = {"uid": secrets.token_hex(16), "enabled": True, **fields}
                outputs[created["uid"]] = created
                return 200, created
            raise ApiError(405, 10000, "method not allowed")
        output = outputs.get(out)
        if output is None:
            raise ApiError(404, 10003, "output not found")
        if method == "PUT":
            output.update(_checked(body, {"enabled": (bool,)}, required=("enabled",)))
            return 200, output
        if method == "DELETE":
            del outputs[out]
            return 200, _EMPTY
        raise ApiError(405, 10000, "method not allowed")

    def _create_input(self, body: Any) -> dict[str, Any]:
        fields = _checked(body, _INPUT_FIELDS, required=())
        uid = secrets.token_hex(16)
        key = secrets.token_hex(16) + "k" + secrets.token_hex(15)
        live_input = {
            "uid": uid,
            "created": _now(),
            "modified": _now(),
            "meta": {},
            "enabled": True,
            "deleteRecordingAfterDays": None,
            "preferLowLatency": False,
            "recording": {
                "mode": "off",
                "requireSignedURLs": False,
                "allowedOrigins": None,
                "timeoutSeconds": 0,
            },
            "rtmps": {"url": "rtmps://live.cloudflare.com:443/live/", "streamKey": key},
            "rtmpsPlayback": {
                "url": "rtmps://live.cloudflare.com:443/live/",
                "streamKey": secrets.token_hex(16),
            },
            "srt": {
                "url": "srt://live.cloudflare.com:778",
                "streamId": uid,
                "passphrase": secrets.token_hex(16),
            },
            "webRTC": {"url": f"https://customer-x.cloudflarestream.com/{key}/webRTC/publish"},
            "status": None,
            **fields,
        }
        self.inputs[uid] = live_input
        return live_input


_EMPTY = object()  # a 200 without a body (the DELETE endpoints)


def _checked(body: Any, allowed: dict[str, tuple[type, ...]], required: tuple[str, ...]) -> dict[str, Any]:
    """The body's fields, or ApiError 400 naming the first missing, unknown or mistyped one."""
    if not isinstance(body, dict):
        raise ApiError(400, 10005, "body must be a JSON object")
    for name in required:
        if name not in body:
            raise ApiError(400, 10005, f"{name} is required")
    for name, value in body.items():
        if name not in allowed:
            raise ApiError(400, 10005, f"unknown field {name!r}")
        if not isinstance(value, allowed[name]) or (isinstance(value, bool) and bool not in allowed[name]):
            raise ApiError(400, 10005, f"{name} has the wrong type")
    return dict(body)


def live_input_notification(
    uid: str, event_type: str, ts: int | None = None, updated_at: str | None = None
) -> bytes:
    """A Stream Live notification body, as documented ("Receive Live Webhooks")."""
    updated = updated_at or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")  # ns, as documented
    ts = int(time.time()) if ts is None else ts
    return json.dumps(
        {
            "name": "Streampai live input",
            "text": f"Notification type: Stream Live Input\nInput ID: {uid}\nEvent type: {event_type}\nUpdated at: {updated}",
            "data": {
                "notification_name": "Stream Live Input",
                "input_id": uid,
                "event_type": event_type,
                "updated_at": updated,
            },
            "ts": ts,
        }
    ).encode()


def sign_webhook(secret: str, body: bytes, at: int | None = None) -> str:
    """The Webhook-Signature header: ``time=<unix>,sig1=<hex HMAC-SHA256 of "<time>.<body>">``."""
    at = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"time={at},sig1={mac}"
