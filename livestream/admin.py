"""livestream in the Django admin: the presence debug page, and who is online.

* ``/admin/livestream/debug/`` (``admin:livestream_debug``): running managers,
  presence, pending cleanups and workers, refreshed live; staff can stop or
  restart one user's manager. Every view goes through ``admin_site.admin_view``,
  so anyone who is not active staff gets the admin login, never the data.
* ``UserComponent``: each user's components over the settings' default; saving
  or deleting a row starts or stops just that component in their running manager.
* The user list gains an "online" column (open dashboard sessions) and an
  "online" filter. The registered user admin is subclassed, not replaced, and
  hijack.contrib.admin (whose ready() runs after admin autodiscovery) wraps the
  result with its impersonate button as before.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

import django.contrib.auth.admin  # noqa: F401  (registers the stock user admin before we extend it)
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from livestream.models import Debug, UserComponent
from livestream.observe import views
from livestream.observe.state import session_counts_sync

logger = logging.getLogger(__name__)

User = get_user_model()

# Open sessions per user id, read once per user-list request (the column and the
# filter share it; display callables get no request).
_sessions: ContextVar[dict[str, int] | None] = ContextVar("livestream_sessions", default=None)


def _staff(request: HttpRequest) -> bool:
    return bool(request.user.is_active and request.user.is_staff)


@admin.register(Debug)
class DebugAdmin(admin.ModelAdmin):
    """Staff-only views; the model only gives them a place in the admin index."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return _staff(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return _staff(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        page = view(self.page_view)
        return [
            path("", page, name="livestream_debug"),
            path("", page, name="livestream_debug_changelist"),  # the admin index links here
            path("panel/", view(self.panel_view), name="livestream_debug_panel"),
            path("state.json", view(views.debug_state), name="livestream_debug_state"),
            path("<str:user_id>/<str:action>/", view(views.manager_action), name="livestream_debug_action"),
        ]

    def page_view(self, request: HttpRequest) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Presence debug",
            "opts": self.model._meta,
            **views.debug_context(request),
        }
        return TemplateResponse(request, "livestream/admin/debug.html", context)

    def panel_view(self, request: HttpRequest) -> HttpResponse:
        return TemplateResponse(request, "livestream/admin/debug_panel.html", views.debug_context(request))


class OnlineFilter(admin.SimpleListFilter):
    title = "online"
    parameter_name = "online"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Online"), ("no", "Offline")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() not in ("yes", "no"):
            return queryset
        pks = views.user_pks(_sessions.get() or {})
        return queryset.filter(pk__in=pks) if self.value() == "yes" else queryset.exclude(pk__in=pks)


_RegisteredUserAdmin: type[admin.ModelAdmin] = type(admin.site._registry[User])


# The base is whatever admin the project registered for User (known at run time only), so mypy
# cannot check it as a base class.
class OnlineUserAdmin(_RegisteredUserAdmin):  # type: ignore[valid-type,misc]
    # After username and email, where it is seen without scrolling.
    list_display = (*_RegisteredUserAdmin.list_display[:2], "online", *_RegisteredUserAdmin.list_display[2:])
    list_filter = (OnlineFilter, *_RegisteredUserAdmin.list_filter)

    @admin.display(description="online")
    def online(self, obj: Any) -> int | None:
        """Open dashboard sessions (blank when offline)."""
        return (_sessions.get() or {}).get(str(obj.pk)) or None

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        try:
            counts = session_counts_sync()
        except Exception as exc:  # Redis down: the user list still works
            logger.warning("[admin] presence unavailable for the user list: %r", exc)
            messages.warning(request, "Presence is unavailable right now; the online column is blank.")
            counts = {}
        token = _sessions.set(counts)
        try:
            response = super().changelist_view(request, extra_context)
            if isinstance(response, TemplateResponse):
                response.render()  # the column reads _sessions while rendering
            return response
        finally:
            _sessions.reset(token)


admin.site.unregister(User)
admin.site.register(User, OnlineUserAdmin)


@admin.register(UserComponent)
class UserComponentAdmin(admin.ModelAdmin):
    list_display = ("user", "name", "enabled")
    list_editable = ("enabled",)
    list_filter = ("enabled", "name")
    search_fields = ("user__email", "name")
    raw_id_fields = ("user",)
