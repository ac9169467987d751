"""The real ASGI app plus a baseline route, for benchmarks/daphne_connect_cost.py.

/ws/presence/  dashboard.consumers.PresenceConsumer (what is measured)
/ws/accept/    a plain Channels AsyncWebsocketConsumer that only accepts, behind the
               same AuthMiddlewareStack: the floor a dashboard socket is compared to.
"""

from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter, URLRouter
from django.urls import path

from dashboard.routing import websocket_urlpatterns
from livestream import diffs
from streampai.asgi import application as real_application  # runs django.setup()

if not hasattr(diffs, "broadcast"):  # measuring the pre-hub consumer ("before"), whose broadcast is gone

    async def _no_broadcast(message):  # type: ignore[no-untyped-def]
        return None

    diffs.broadcast = _no_broadcast  # type: ignore[attr-defined]


class AcceptOnly(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()


application = ProtocolTypeRouter(
    {
        "http": real_application.application_mapping["http"],
        "websocket": AuthMiddlewareStack(
            URLRouter([*websocket_urlpatterns, path("ws/accept/", AcceptOnly.as_asgi())])
        ),
    }
)
