"""The platforms app: connects the model signals that keep a running PlatformSupervisor current."""

from django.apps import AppConfig


class PlatformsConfig(AppConfig):
    name = "platforms"
    verbose_name = "Connected platforms"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from platforms import oauth, signals  # noqa: F401  (connect the model receivers)
