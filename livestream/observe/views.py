"""livestream's HTTP views: the staff debug page's data and actions, and /metrics.

The debug views are wired (and guarded: active staff only) by DebugAdmin in
livestream/admin.py through ``admin_site.admin_view``; never route them directly.
"""

from __future__ import annotations

import hmac
import logging
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import async_to_sync
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect
from django.urls import NoReverseMatch, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from prometheus_client import CONTENT_TYPE_LATEST

from livestream import ids
from livestream.conf import get_settings
from livestream.observe.metrics import read_metrics, render
from livestream.observe.state import Snapshot, describe, format_duration, read_state_sync, run_sync
from livestream.worker import control

logger = logging.getLogger("livestream.views")


# -- the staff debug page ------------------------------------------------------


def debug_context(request: HttpRequest) -> dict[str, Any]:
    """Template context for the debug page and its live panel."""
    try:
        snapshot = read_state_sync()
    except Exception as exc:  # Redis down: say so on the page instead of a 500
        logger.warning("[admin] presence debug: reading state failed: %r", exc)
        return {"error": f"Could not read the shared state from Redis: {describe(exc)}"}
    users = _users(snapshot)
    now = snapshot.taken_at.timestamp()

    def who(uid: str) -> dict[str, Any]:
        email = users.get(uid, {}).get("email") or _meta_email(snapshot, uid)
        return {"user_id": uid, "email": email, "user_url": users.get(uid, {}).get("url")}

    managers = [
        {
            **who(uid),
            "worker": m.worker,
            "started_at": m.started_at,
            "uptime": format_duration(now - m.started_at.timestamp(), sep=" "),
            "components": [
                {"name": name, "state": c.state, "restarts": c.restarts, "extra": c.extra}
                for name, c in m.components.items()
            ],
            "sessions": len(snapshot.presence.get(uid, [])),
            "cleanup_in": snapshot.pending_cleanups.get(uid),
        }
        for uid, m in snapshot.managers.items()
    ]
    presence = [
        {**who(uid), "metas": [_meta_row(meta, now) for meta in metas]}
        for uid, metas in snapshot.presence.items()
    ]
    return {
        "snapshot": snapshot,
        "totals": snapshot.totals,
        "managers": managers,
        "presence": presence,
        "cleanups": [{**who(uid), "due_in": due} for uid, due in snapshot.pending_cleanups.items()],
        "held": [{**who(uid), "by": by} for uid, by in snapshot.held.items()],
        "workers": [
            {
                "id": wid,
                "host": w.host,
                "pid": w.pid,
                "seen_ago": w.seen_ago,
                "managers": sum(1 for m in snapshot.managers.values() if m.worker == wid),
            }
            for wid, w in snapshot.workers.items()
        ],
    }


@never_cache
def debug_state(request: HttpRequest) -> JsonResponse:
    """The debug page's data as JSON (presence_debug --json plus details)."""
    try:
        return JsonResponse(read_state_sync().as_detail())
    except Exception as exc:
        logger.warning("[admin] presence debug: reading state failed: %r", exc)
        return JsonResponse({"error": "shared state unavailable"}, status=503)


@require_POST
def manager_action(request: HttpRequest, user_id: str, action: str) -> HttpResponse:
    """Stop or restart one user's manager (POST, CSRF-checked by admin_view)."""
    if action not in control.ACTIONS or not ids.is_user_id(user_id):
        raise Http404("unknown action or user")  # nothing from the URL reaches a log unchecked
    staff = request.user
    logger.info(
        "[admin] staff %s (%s) asked to %s the manager of user %s",
        staff.pk,
        staff.get_username(),
        action,
        user_id,
    )
    try:
        async_to_sync(control.request)(action, user_id, str(staff.pk))
    except Exception as exc:
        logger.warning("[admin] %s of user %s not sent: %r", action, user_id, exc)
        messages.error(request, f"Could not reach the workers ({describe(exc)}); nothing was done.")
    else:
        messages.success(request, f"Asked the workers to {action} the manager of user {user_id}.")
    return redirect("admin:livestream_debug")


def user_pks(user_ids: Any) -> list[Any]:
    """The user ids (strings from Redis) that are valid primary keys of the user model."""
    field = get_user_model()._meta.pk
    pks = []
    for uid in user_ids:
        try:
            pks.append(field.to_python(uid))
        except ValidationError:
            continue
    return pks


def _users(snapshot: Snapshot) -> dict[str, dict[str, Any]]:
    User = get_user_model()
    ids = {*snapshot.presence, *snapshot.managers, *snapshot.pending_cleanups, *snapshot.held}
    found: dict[str, dict[str, Any]] = {}
    for pk, email in User.objects.filter(pk__in=user_pks(ids)).values_list("pk", User.get_email_field_name()):
        try:
            url = reverse(f"admin:{User._meta.app_label}_{User._meta.model_name}_change", args=[pk])
        except NoReverseMatch:
            url = None
        found[str(pk)] = {"email": email, "url": url}
    return found


def _meta_email(snapshot: Snapshot, user_id: str) -> str:
    metas = snapshot.presence.get(user_id) or [{}]
    return str(metas[0].get("email", ""))


def _meta_row(meta: dict[str, Any], now: float) -> dict[str, Any]:
    joined = meta.get("joined_at")
    row: dict[str, Any] = {"ref": meta.get("ref", ""), "joined_at": None, "joined_ago": ""}
    if isinstance(joined, int | float):
        row["joined_at"] = datetime.fromtimestamp(joined, UTC)
        row["joined_ago"] = format_duration(now - joined, sep=" ")
    row["other"] = {k: v for k, v in meta.items() if k not in ("ref", "joined_at")}
    return row


# -- Prometheus ----------------------------------------------------------------


def may_read_metrics(request: HttpRequest) -> bool:
    """Staff sessions, or ``Authorization: Bearer <METRICS_TOKEN>`` when a token is set."""
    token = get_settings().METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_active and user.is_staff)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text format; 404 unless LIVESTREAM["METRICS_ENABLED"]."""
    if not get_settings().METRICS_ENABLED:
        raise Http404("metrics are disabled")
    if not may_read_metrics(request):
        return HttpResponseForbidden("metrics: staff or a bearer token only\n", content_type="text/plain")
    try:
        body = render(run_sync(read_metrics))
    except Exception as exc:
        logger.warning("[metrics] reading state failed: %r", exc)
        return HttpResponse("shared state unavailable\n", status=503, content_type="text/plain")
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
