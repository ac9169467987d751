"""The dashboard app's config: connects its signal receivers (impersonation audit, session ends)
and, under daphne, checks daphne's internals and trims autobahn's connect path
(dashboard/daphne/adapter.py)."""

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Dashboard"

    def ready(self) -> None:
        # Signal receivers: audit log of impersonation, sockets closed when a session ends,
        # the handshake cache forgetting a saved or deleted user (in every process that saves one).
        import sys

        from dashboard.auth import impersonation, revocation, sessions, ws_auth  # noqa: F401  (connect the receivers)
        from dashboard.daphne import adapter

        if "daphne.server" in sys.modules:  # under daphne: check its internals now, at start
            adapter.check()
        adapter.lazy_autobahn_config_log()
