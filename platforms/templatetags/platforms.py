"""``{% platforms_panel %}``: the Stream page's connections list and chat panel (platforms/_panel.html)."""

from __future__ import annotations

from typing import Any

from django import template
from django.conf import settings

from platforms.models import PlatformConnection

register = template.Library()


def _offered() -> list[tuple[str, str]]:
    """(allauth provider id, label) of the OAuth providers with an app configured."""
    providers = getattr(settings, "SOCIALACCOUNT_PROVIDERS", {})
    return [
        (p, label)
        for p, label in (("twitch", "Twitch"), ("google", "YouTube"))
        if providers.get(p, {}).get("APPS")
    ]


@register.inclusion_tag("platforms/_panel.html", takes_context=True)
def platforms_panel(context: dict[str, Any]) -> dict[str, Any]:
    request = context.get("request")
    user = getattr(request, "user", None)
    rows = (
        list(PlatformConnection.objects.filter(user=user))
        if user is not None and user.is_authenticated
        else []
    )
    return {
        "request": request,
        "csrf_token": context.get("csrf_token"),
        "connections": rows,
        "offered": _offered(),
        "max_length": 500,
    }
