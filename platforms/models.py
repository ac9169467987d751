"""PlatformConnection: one streaming account (Twitch, YouTube) or custom RTMP target of a user.

Tokens and the custom stream key are stored encrypted (streampai.secrets); the plaintext
is reached only through the properties below and is never logged or shown (log
``public_id`` or ``secrets.mask(...)``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from streampai import secrets


class PlatformConnection(models.Model):
    TWITCH = "twitch"
    YOUTUBE = "youtube"
    CUSTOM = "custom"
    PLATFORMS = [(TWITCH, "Twitch"), (YOUTUBE, "YouTube"), (CUSTOM, "Custom RTMP")]

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="platform_connections"
    )
    platform = models.CharField(max_length=16, choices=PLATFORMS)
    name = models.CharField(max_length=100, blank=True, help_text="Shown on the Stream page.")
    # Twitch: the channel's login (chat is #<login>); YouTube: the channel id.
    channel = models.CharField(max_length=100, blank=True)
    # The provider's account id (allauth's SocialAccount.uid) when connected by OAuth.
    uid = models.CharField(max_length=191, blank=True)
    access_token_enc = models.TextField(blank=True, editable=False)
    refresh_token_enc = models.TextField(blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Custom RTMP: the server URL as typed and the encrypted stream key.
    url = models.CharField(max_length=500, blank=True)
    key_enc = models.TextField(blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    # Why the platform stopped for good (a revoked token): shown as "reconnect <Platform>".
    revoked = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["user_id", "id"]

    def __str__(self) -> str:
        return f"{self.public_id} {self.display_name} of user {self.user_id}"

    @property
    def public_id(self) -> str:
        """The id the pages, events and broadcast outputs use: ``"twitch:3"``."""
        return f"{self.platform}:{self.pk}"

    @property
    def display_name(self) -> str:
        return self.name or self.channel or self.get_platform_display()

    @staticmethod
    def _read(value: str) -> str:
        if not value:
            return ""
        try:
            return secrets.decrypt(value)
        except secrets.SecretError:  # the secrets key changed: as if nothing were stored
            return ""

    @property
    def access_token(self) -> str:
        return self._read(self.access_token_enc)

    @access_token.setter
    def access_token(self, value: str) -> None:
        self.access_token_enc = secrets.encrypt(value) if value else ""

    @property
    def refresh_token(self) -> str:
        return self._read(self.refresh_token_enc)

    @refresh_token.setter
    def refresh_token(self, value: str) -> None:
        self.refresh_token_enc = secrets.encrypt(value) if value else ""

    @property
    def key(self) -> str:
        return self._read(self.key_enc)

    @key.setter
    def key(self, value: str) -> None:
        self.key_enc = secrets.encrypt(value) if value else ""
