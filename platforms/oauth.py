"""A Twitch or Google account connected through django-allauth becomes a PlatformConnection.

allauth (SOCIALACCOUNT_STORE_TOKENS) saves the provider's tokens in its SocialToken
table, in plain text. On that save the tokens are copied, encrypted, into the user's
PlatformConnection for that account (created, or updated and un-revoked: connecting
again is how a user repairs a revoked connection) and then blanked in allauth's row,
so no token stays unencrypted at rest.
"""

from __future__ import annotations

import logging
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.db.models.signals import post_save
from django.dispatch import receiver

from platforms.models import PlatformConnection

logger = logging.getLogger("platforms")

PLATFORM_OF = {"twitch": PlatformConnection.TWITCH, "google": PlatformConnection.YOUTUBE}


def channel_of(provider: str, uid: str, extra: dict[str, Any]) -> tuple[str, str]:
    """(channel, display name) from the provider's account data."""
    if provider == "twitch":  # allauth keeps Helix's /users entry
        login = str(extra.get("login") or uid).lower()
        return login, str(extra.get("display_name") or login)
    return uid, str(extra.get("name") or extra.get("email") or "YouTube")


@receiver(post_save, sender=SocialToken)
def token_saved(sender: type[SocialToken], instance: SocialToken, **kwargs: Any) -> None:
    account = instance.account
    platform = PLATFORM_OF.get(account.provider)
    if platform is None or not instance.token:
        return
    channel, name = channel_of(account.provider, account.uid, account.extra_data or {})
    row = PlatformConnection.objects.filter(
        user_id=account.user_id, platform=platform, uid=account.uid
    ).first()
    if row is None:
        row = PlatformConnection(user_id=account.user_id, platform=platform, uid=account.uid, name=name)
    row.channel = channel
    row.access_token = instance.token
    if instance.token_secret:  # allauth keeps the refresh token here
        row.refresh_token = instance.token_secret
    row.expires_at = instance.expires_at
    row.revoked = ""
    row.enabled = True
    row.save()
    SocialToken.objects.filter(pk=instance.pk).update(token="", token_secret="")
    logger.info(
        "[platforms] %s connected through %s for user %s", row.public_id, account.provider, account.user_id
    )
