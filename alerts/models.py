"""AlertWebhook: a user's secret webhook URL, ``/hooks/alerts/<user id>/<secret>/``.

Created on first need (the Stream page shows it), one per user. Rotating replaces the
secret: the old URL stops working with the next request (every request reads the row).
The secret is stored as is, because the page must show the URL; it grants nothing but
queueing alerts for that user.
"""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

# 32 random bytes, URL-safe base64: 43 characters, 256 bits.
SECRET_BYTES = 32
SECRET_LENGTH = 43


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


class AlertWebhook(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="alert_webhook"
    )
    secret = models.CharField(max_length=64, default=new_secret)
    created_at = models.DateTimeField(default=timezone.now)
    rotated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "alert webhook"

    def __str__(self) -> str:
        return f"alert webhook of user {self.user_id}"

    def rotate(self) -> None:
        """A new secret, saved at once: the old URL is refused from the next request on."""
        self.secret = new_secret()
        self.rotated_at = timezone.now()
        self.save(update_fields=["secret", "rotated_at"])

    @classmethod
    def for_user(cls, user_id: int) -> AlertWebhook:
        """The user's webhook, created (with a fresh secret) on first need."""
        webhook, _ = cls.objects.get_or_create(user_id=user_id)
        return webhook
