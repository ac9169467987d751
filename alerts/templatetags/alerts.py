"""``{% alert_webhook as hook %}``: the signed-in user's webhook (created on first need),
for livestream/_alert_webhook.html; ``{% alert_overlay %}``: the page's alert overlay."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from alerts.models import AlertWebhook
from livestream.conf import get_settings

register = template.Library()


@register.simple_tag(takes_context=True)
def alert_webhook(context: dict[str, Any]) -> dict[str, Any] | None:
    request = context.get("request")
    user = getattr(request, "user", None)
    if request is None or user is None or not user.is_authenticated:
        return None
    webhook = AlertWebhook.for_user(user.pk)
    path = reverse("alerts:webhook", args=[str(user.pk), webhook.secret])
    return {
        "url": request.build_absolute_uri(path),
        "created_at": webhook.created_at,
        "rotated_at": webhook.rotated_at,
    }


@register.inclusion_tag("livestream/_alert_overlay.html")
def alert_overlay() -> dict[str, Any]:
    return {"display_ms": int(get_settings().ALERT_DISPLAY_INTERVAL * 1000)}
