"""Alert webhooks in the admin: who has one, when it was made and rotated; a rotate action.

The secret itself is not shown (it is a credential); staff rotate it, the user sees
their URL on the Stream page.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from alerts.models import AlertWebhook


@admin.register(AlertWebhook)
class AlertWebhookAdmin(admin.ModelAdmin):
    list_display = ("user", "created_at", "rotated_at")
    search_fields = ("user__email", "user__username")
    fields = ("user", "created_at", "rotated_at")
    readonly_fields = ("created_at", "rotated_at")
    raw_id_fields = ("user",)
    actions = ("rotate",)

    @admin.action(description="Rotate the secret (the old URL stops working)")
    def rotate(self, request: HttpRequest, queryset: QuerySet[AlertWebhook]) -> None:
        for webhook in queryset:
            webhook.rotate()
        messages.success(request, f"Rotated {queryset.count()} webhook secret(s).")
