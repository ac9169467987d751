"""The app's models: each user's component choices (UserComponent), and a placeholder
that gives the staff presence debug page its admin URL."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models


class Debug(models.Model):
    """No table and no rows: gives the staff presence debug page (livestream/admin.py)
    its place in the admin index and its URL, /admin/livestream/debug/."""

    class Meta:
        managed = False
        default_permissions = ()  # staff only, by is_staff (see DebugAdmin)
        verbose_name = verbose_name_plural = "presence debug"


class UserComponent(models.Model):
    """One user's choice about one component, over the LIVESTREAM["COMPONENTS"] default:
    enabled adds it to their manager, disabled removes it (livestream/components/choices.py).
    Saving or deleting a row starts or stops just that component in a running manager."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="components")
    path = models.CharField(
        max_length=200,
        help_text="Dotted path of the component class, e.g. livestream.components.stream_state.StreamStateServer",
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "path"], name="one_choice_per_component")]
        ordering = ["user_id", "path"]

    def __str__(self) -> str:
        return f"{self.path.rsplit('.', 1)[-1]} {'on' if self.enabled else 'off'} for user {self.user_id}"

    def clean(self) -> None:
        from django.utils.module_loading import import_string

        from livestream.components.base import Component

        try:
            cls = import_string(self.path)
        except ImportError:
            raise ValidationError({"path": f"no such class: {self.path!r}"}) from None
        if not (isinstance(cls, type) and issubclass(cls, Component)):
            raise ValidationError({"path": f"{self.path!r} is not a livestream Component"})
