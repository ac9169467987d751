"""daphne's ``runserver``, plus the embedded Redis a fresh clone needs.

With REDIS_URL unset the settings point at the embedded redis-server's socket
under var/redis/, which only `make run` used to start: on a fresh clone
``manage.py runserver`` served pages but every login (allauth's rate limits are
in the Redis cache) and every WebSocket failed. Here runserver starts that
Redis itself when nothing answers on the socket, and stops it on exit.
dashboard/management/commands/runserver.py makes it the command (dashboard is listed
before daphne in INSTALLED_APPS, so it wins over daphne's own).
"""

from __future__ import annotations

import atexit
import os

import redis
from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings

from streampai.embedded_redis import EmbeddedRedis, default_socket_dir


def ensure_embedded_redis() -> EmbeddedRedis | None:
    """Start the default embedded Redis unless REDIS_URL is set or it already runs."""
    if os.environ.get("REDIS_URL"):
        return None
    server = EmbeddedRedis(default_socket_dir(settings.BASE_DIR))
    try:
        redis.Redis.from_url(server.url, socket_timeout=1).ping()
        return None  # `make run` (or another runserver) already started it
    except (redis.RedisError, OSError):
        pass
    server.start()
    atexit.register(server.stop)
    return server


class Command(DaphneRunserver):
    def handle(self, *args, **options):
        # The autoreloader re-runs this in a child (RUN_MAIN=true): start Redis in the parent only.
        if os.environ.get("RUN_MAIN") != "true":
            server = ensure_embedded_redis()
            if server is not None:
                self.stdout.write(f"Embedded Redis: {server.url} (set REDIS_URL to use another)")
        return super().handle(*args, **options)
