"""The webhook's per-IP rate limit, as ASGI middleware in front of Django (streampai/asgi.py).

Under a flood most POSTs are over the limit: answering them here (one Redis script,
no Django request, no middleware stack, no database) is what keeps a flood from
taking daphne's CPU from everybody else's sockets (issue 20.4). The rest go on to
Django, where the view checks the secret, the user's own rate and the body.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from alerts import ratelimit
from dashboard.ws.limits import Throttled
from livestream.conf import get_settings

logger = logging.getLogger("alerts.views")

PREFIX = "/hooks/alerts/"
ROTATE = "/hooks/alerts/rotate/"  # the signed-in page's form: not the webhook

_refusals = Throttled(60.0)


def is_webhook(path: str) -> bool:
    return path.startswith(PREFIX) and path != ROTATE


async def send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class WebhookGate:
    """Refuses webhook POSTs over ALERT_RATE_PER_IP with 429 + Retry-After, before Django."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and is_webhook(scope.get("path", "")):
            conf = get_settings()
            ip = str((scope.get("client") or ("?", 0))[0])
            wait = await ratelimit.take(
                ratelimit.ip_bucket(ip), conf.ALERT_RATE_PER_IP, conf.ALERT_BURST_PER_IP
            )
            if wait:
                held = _refusals.due(ip)
                if held is not None:
                    more = f" ({held} more since the last line)" if held else ""
                    logger.warning(
                        "[alerts] webhook posts from %r over %s/s%s", ip, conf.ALERT_RATE_PER_IP, more
                    )
                message = f"too many requests: at most {conf.ALERT_RATE_PER_IP:g} per second from one address"
                await send_json(send, 429, {"error": message}, [(b"retry-after", str(wait).encode())])
                return
        await self.app(scope, receive, send)
