"""No real models: a placeholder that gives the staff presence debug page its admin URL."""

from django.db import models


class Debug(models.Model):
    """No table and no rows: gives the staff presence debug page (livestream/admin.py)
    its place in the admin index and its URL, /admin/livestream/debug/."""

    class Meta:
        managed = False
        default_permissions = ()  # staff only, by is_staff (see DebugAdmin)
        verbose_name = verbose_name_plural = "presence debug"
