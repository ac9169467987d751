"""The dashboard app's config: connects its signal receivers (impersonation audit, session ends)."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Dashboard"

    def ready(self) -> None:
        # Signal receivers: audit log of impersonation, sockets closed when a session ends.
        from dashboard import impersonation, sessions  # noqa: F401
