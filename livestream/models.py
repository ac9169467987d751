"""The app's models: each user's component choices (UserComponent), and a placeholder
that gives the staff presence debug page its admin URL."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Debug(models.Model):
    """No table and no rows: gives the staff presence debug page (livestream/admin.py)
    its place in the admin index and its URL, /admin/livestream/debug/."""

    class Meta:
        managed = False
        default_permissions = ()  # staff only, by is_staff (see DebugAdmin)
        verbose_name = verbose_name_plural = "presence debug"


def _component_choices() -> list[tuple[str, str]]:
    # Read on each use (a callable): the registry depends on settings.
    from livestream.components.registry import choices

    return choices()


class UserComponent(models.Model):
    """One user's choice about one component, over the LIVESTREAM["COMPONENTS"] default:
    enabled adds it to their manager, disabled removes it (livestream/components/choices.py).
    Saving or deleting a row starts or stops just that component in a running manager."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="components")
    # A registered component name (livestream/components/registry.py): the admin offers
    # exactly those. A stored name this deployment does not register is skipped by the
    # worker with one log line; it is never imported.
    name = models.CharField(
        max_length=200,  # room for an old dotted path the migration kept
        choices=_component_choices,
        help_text="A registered component, e.g. StreamStateServer",
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="one_choice_per_component")]
        ordering = ["user_id", "name"]

    def __str__(self) -> str:
        return f"{self.name} {'on' if self.enabled else 'off'} for user {self.user_id}"
