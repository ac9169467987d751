"""Two floor ASGI applications for the connect-cost comparison (daphne_connections).

    daphne benchmarks.asgi_floor:auth_accept_application   # Channels + AuthMiddlewareStack, accept only
    daphne benchmarks.asgi_floor:bare_application          # raw ASGI, accept only

Both serve /ws/presence/ with DJANGO_SETTINGS_MODULE=streampai.settings and the
same environment as the real daphne, so the only difference from
streampai.asgi:application is what the consumer does after the handshake.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streampai.settings")
get_asgi_application()  # django.setup(), as streampai.asgi does

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402


class AcceptConsumer(AsyncWebsocketConsumer):
    """Accepts every handshake (the session was already looked up by AuthMiddlewareStack)."""

    async def connect(self) -> None:
        await self.accept()


auth_accept_application = ProtocolTypeRouter(
    {"websocket": AuthMiddlewareStack(URLRouter([path("ws/presence/", AcceptConsumer.as_asgi())]))}
)


async def bare_application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept a WebSocket, then wait for its end; nothing else."""
    if scope["type"] != "websocket":
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.disconnect":
            return
