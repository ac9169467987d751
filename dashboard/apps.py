"""The dashboard app's config: connects its signal receivers (impersonation audit, session ends)
and trims autobahn's connect path (dashboard/daphne/transport.py)."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Dashboard"

    def ready(self) -> None:
        # Signal receivers: audit log of impersonation, sockets closed when a session ends,
        # the handshake cache forgetting a saved or deleted user (in every process that saves one).
        from dashboard.auth import revocation, sessions, ws_auth  # noqa: F401  (their receivers)
        from dashboard.daphne.transport import lazy_autobahn_config_log

        lazy_autobahn_config_log()
