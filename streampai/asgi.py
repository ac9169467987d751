"""ASGI entry point: HTTP pages, the dashboard WebSocket and the worker channel.

browser -> daphne -> "websocket": dashboard.consumers.PresenceConsumer
runworker presence-manager -> "channel": livestream.consumers.PresenceManagerConsumer
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streampai.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402
from livestream.conf import get_settings  # noqa: E402
from livestream.consumers import PresenceManagerConsumer  # noqa: E402

http_app = ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app

application = ProtocolTypeRouter(
    {
        "http": http_app,
        # Origin is checked by the consumer itself (same-origin, logged), so
        # that a refusal says why.
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
        "channel": ChannelNameRouter({get_settings().WORKER_CHANNEL: PresenceManagerConsumer.as_asgi()}),
    }
)
