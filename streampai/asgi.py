"""ASGI entry point: HTTP pages, the dashboard WebSocket and the worker channel.

browser -> daphne -> "websocket": dashboard.consumers.PresenceConsumer
runworker presence-manager -> "channel": livestream.consumers.PresenceManagerConsumer
"""

import os

from django.core.asgi import get_asgi_application

from streampai.startup import exit_on_bad_configuration

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streampai.settings")
# A bad configuration stops daphne here, with one line, before it listens.
with exit_on_bad_configuration():
    django_asgi_app = get_asgi_application()

# Only now, with Django set up:
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from alerts.gate import WebhookGate
from dashboard.auth.ws_auth import CachedAuthMiddlewareStack
from dashboard.daphne.accesslog import install as install_log_redaction
from dashboard.daphne.bodylimit import install as install_body_limit
from dashboard.routing import websocket_urlpatterns
from dashboard.ws.admission import HandshakeGate
from livestream.conf import get_settings
from livestream.worker.consumer import PresenceManagerConsumer

# daphne imports this module before it serves (and writes its first access-log line):
# secrets in request paths are masked there too.
install_log_redaction()
# Bodies capped while daphne reads them (a 200 MB POST is refused, not buffered).
install_body_limit()

# The webhook's per-IP rate limit answers before Django (alerts/gate.py).
http_app = WebhookGate(ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app)

application = ProtocolTypeRouter(
    {
        "http": http_app,
        # Origin is checked by the consumer itself (same-origin, logged), so
        # that a refusal says why.
        # Admission first: a storm of handshakes waits its turn before any work.
        # The session's user comes from a Redis cache when it can (dashboard/auth/ws_auth.py).
        "websocket": HandshakeGate(CachedAuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        "channel": ChannelNameRouter({get_settings().WORKER_CHANNEL: PresenceManagerConsumer.as_asgi()}),
    }
)
