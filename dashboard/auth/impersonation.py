"""Impersonation rules and audit log, on top of django-hijack.

django-hijack does the session work (log in as the user, remember who to
return to, the "stop" view and the banner); here we decide who may impersonate
whom (settings.HIJACK_PERMISSION_CHECK) and log every start and stop.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import receiver
from hijack.signals import hijack_ended, hijack_started

logger = logging.getLogger("dashboard.impersonation")


def superusers_impersonate_others(*, hijacker: Any, hijacked: Any) -> bool:
    """Only an active superuser, only as an active non-superuser other than themselves."""
    if hijacked is None or hijacker is None:
        return False
    return bool(
        hijacker.is_authenticated
        and hijacker.is_active
        and hijacker.is_superuser
        and hijacked.is_active
        and not hijacked.is_superuser
        and hijacker.pk != hijacked.pk
    )


def _who(user: Any) -> str:
    return f"{user.pk} ({user.get_username()})"


@receiver(hijack_started, dispatch_uid="dashboard.impersonation.started")
def _log_started(sender: Any, hijacker: Any, hijacked: Any, request: Any = None, **kwargs: Any) -> None:
    logger.info("[impersonation] superuser %s started impersonating user %s", _who(hijacker), _who(hijacked))


@receiver(hijack_ended, dispatch_uid="dashboard.impersonation.ended")
def _log_ended(sender: Any, hijacker: Any, hijacked: Any, request: Any = None, **kwargs: Any) -> None:
    logger.info("[impersonation] superuser %s stopped impersonating user %s", _who(hijacker), _who(hijacked))
