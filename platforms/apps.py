"""The platforms app: connects the model signals that keep a running PlatformSupervisor current."""

from django.apps import AppConfig


class PlatformsConfig(AppConfig):
    name = "platforms"
    verbose_name = "Connected platforms"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from platforms import oauth, signals  # noqa: F401  (connect the model receivers)

        try:
            from broadcast.outputs import register_source
        except ImportError:  # without the broadcast app there is nothing to send a stream to
            return
        from platforms.outputs import platform_outputs

        register_source(platform_outputs)
