"""WebSocket routes: ``/ws/presence/`` (dashboard.consumers.PresenceConsumer, the browser side)."""

from django.urls import path

from dashboard.consumers import PresenceConsumer

websocket_urlpatterns = [
    path("ws/presence/", PresenceConsumer.as_asgi()),
]
