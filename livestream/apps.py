"""The livestream app's config: validates the LIVESTREAM settings as every process starts."""

from django.apps import AppConfig


class LivestreamConfig(AppConfig):
    name = "livestream"
    verbose_name = "Livestream"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Fail fast: every process (daphne, runworker, manage.py) sets up Django
        # through here, so inconsistent LIVESTREAM values stop it at start with
        # one line (manage.py and streampai/asgi.py print it) instead of
        # misbehaving later.
        from livestream import signals  # noqa: F401  (connects the UserComponent receivers)
        from livestream.conf import get_settings, validate

        validate(get_settings())
        # redis-py's and channels-redis' internals we rely on: one line if any is missing.
        from streampai import redis_internals

        redis_internals.check()
