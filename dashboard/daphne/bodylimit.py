"""Request bodies capped while daphne reads them, before it buffers them (issue 20.4).

daphne (twisted.web underneath) reads a whole request body before the application
runs, then queues all of it for the app at once: a chunked 200 MB POST to the webhook
grew daphne from 103 to 305 MB before the view's 413. No ASGI middleware can help,
it runs after that. So daphne's request class is wrapped here:

* ``gotLength`` (the headers are in): a Content-Length over the path's limit gets
  413 at once, nothing of the body read;
* ``handleContentChunk`` (each piece of body, chunked or not): past the limit, 413
  and the connection closed; nothing more is kept;
* ``process`` (the body is complete): for the webhook, bytes that arrived right
  after the declared Content-Length and are not the start of a next request mean
  the length lied: 400 instead of running the view on a truncated body.

The limit: ALERT_MAX_BODY_BYTES for the webhook's paths, MAX_REQUEST_BODY_BYTES for
every other. Refusals write a small JSON response straight to the connection and
close it, one log line per kind per minute. ``install()`` runs from streampai/asgi.py.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from dashboard.ws.limits import Throttled
from livestream.conf import get_settings

logger = logging.getLogger("dashboard.daphne")

WEBHOOK = b"/hooks/alerts/"
ROTATE = b"/hooks/alerts/rotate/"
# What a next (pipelined) request starts with.
REQUEST_LINE = re.compile(rb"^[A-Z]{3,10} \S+ HTTP/1\.[01]\r?$", re.MULTILINE)
REASONS = {400: b"Bad Request", 413: b"Request Entity Too Large"}

_logged = Throttled(60.0)


def _is_webhook(path: bytes) -> bool:
    path = path.split(b"?", 1)[0]
    return path.startswith(WEBHOOK) and path != ROTATE


def limit_for(path: bytes) -> int:
    conf = get_settings()
    return conf.ALERT_MAX_BODY_BYTES if _is_webhook(path) else conf.MAX_REQUEST_BODY_BYTES


def refuse(request: Any, status: int, message: str) -> None:
    """Answer ``status`` with ``{"error": message}`` on the raw connection and close it."""
    request._streampai_refused = True
    channel = request.channel
    transport = getattr(channel, "transport", None)
    if transport is None:
        return
    body = json.dumps({"error": message}).encode()
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n" % (status, REASONS[status], len(body))
    )
    transport.write(head + body)
    transport.loseConnection()
    # Nothing more from this connection is parsed (twisted would try the rest as a request).
    channel.dataReceived = lambda data: None
    held = _logged.due(f"{status}")
    if held is not None:
        more = f" ({held} more since the last line)" if held else ""
        logger.warning("[daphne] refused a request body: %d %s%s", status, message, more)


def install() -> None:
    """Wrap daphne's WebRequest (idempotent)."""
    from daphne.http_protocol import WebRequest

    if getattr(WebRequest, "_streampai_body_limit", False):
        return
    got_length = WebRequest.gotLength
    content_chunk = WebRequest.handleContentChunk
    process = WebRequest.process

    def gotLength(self: Any, length: int | None) -> None:
        path = getattr(self.channel, "_path", b"") or b""
        self._streampai_limit = limit_for(path)
        self._streampai_seen = 0
        self._streampai_webhook = _is_webhook(path)
        self._streampai_length = length
        got_length(self, length if length is None or length <= self._streampai_limit else 0)
        if length is not None and length > self._streampai_limit:
            refuse(self, 413, f"body too large: at most {self._streampai_limit} bytes")

    def handleContentChunk(self: Any, data: bytes) -> None:
        if getattr(self, "_streampai_refused", False):
            return
        self._streampai_seen = getattr(self, "_streampai_seen", 0) + len(data)
        if self._streampai_seen > getattr(self, "_streampai_limit", self._streampai_seen):
            refuse(self, 413, f"body too large: at most {self._streampai_limit} bytes")
            return
        content_chunk(self, data)

    def process_(self: Any) -> Any:
        if getattr(self, "_streampai_refused", False):
            return None
        if getattr(self, "_streampai_webhook", False) and self._streampai_length is not None:
            extra = b"".join(getattr(self.channel, "_dataBuffer", []) or [])
            if extra and not REQUEST_LINE.match(extra.split(b"\n", 1)[0] + b"\n"):
                refuse(self, 400, "Content-Length does not match the body")
                return None
        return process(self)

    WebRequest.gotLength = gotLength
    WebRequest.handleContentChunk = handleContentChunk
    WebRequest.process = process_
    WebRequest._streampai_body_limit = True
