"""Connections in the admin: never a token or key, only whether one is stored."""

from __future__ import annotations

from django.contrib import admin

from platforms.models import PlatformConnection


@admin.register(PlatformConnection)
class PlatformConnectionAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "platform",
        "name",
        "channel",
        "enabled",
        "has_token",
        "expires_at",
        "revoked",
    )
    list_filter = ("platform", "enabled")
    search_fields = ("user__email", "channel", "name")
    # The encrypted columns are not editable (so never in the form); the rest is plain.
    fields = (
        "user",
        "platform",
        "name",
        "channel",
        "uid",
        "url",
        "enabled",
        "expires_at",
        "revoked",
        "has_token",
        "has_key",
    )
    readonly_fields = ("has_token", "has_key")
    raw_id_fields = ("user",)

    @admin.display(boolean=True, description="token stored")
    def has_token(self, obj: PlatformConnection) -> bool:
        return bool(obj.access_token_enc)

    @admin.display(boolean=True, description="key stored")
    def has_key(self, obj: PlatformConnection) -> bool:
        return bool(obj.key_enc)
