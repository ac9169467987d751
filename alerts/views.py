"""The alert webhook (POST /hooks/alerts/<user id>/<secret>/) and its rotation (the Stream page).

Webhook answers, all JSON:

  202 {"id": "3f9c1a0b5e2d4c67", "queued": 1}    queued for the user's AlertManager
  400 {"error": "amount must be a positive number"}   (any validation failure, says which)
  404 {"error": "unknown webhook"}      unknown user, inactive user, malformed id or wrong
                                        secret: one answer, the same work (one query, one
                                        hmac.compare_digest), so neither users nor secrets
                                        can be probed
  405 {"error": "..."}                  anything but POST
  400 {"error": "Content-Length does not match the body"}   (daphne, below Django)
  413 {"error": "..."}                  body over ALERT_MAX_BODY_BYTES: daphne refuses it
                                        while reading (dashboard/daphne/bodylimit.py),
                                        before it is buffered; the view checks again
  429 {"error": "..."} + Retry-After    ALERT_QUEUE_CAP alerts already waiting for this
                                        user, or over the per-IP rate (streampai/asgi.py,
                                        before Django) or the user's rate (here, after
                                        the secret: a stranger cannot spend it);
                                        alerts/ratelimit.py
  503 {"error": "..."}                  Redis unreachable (retry later)

Never a 5xx for a body: every malformed one is a 400 that says what is wrong.
CSRF exempt (it is called by other services, authenticated by the secret). Checks run
cheapest first: rate per IP, size, method, secret, rate per user, body.

Log lines: one INFO line per queued alert (its id, kind and user, never the sender's
text); refused bodies (naming the field, never quoting the sender), over-rate users and
a full queue at most one WARNING line per user per minute; unknown webhooks none
(probes would only fill the log).
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from redis.exceptions import RedisError

from alerts import ratelimit
from alerts.models import AlertWebhook, new_secret
from alerts.queue import AlertQueue
from alerts.validation import Invalid, parse
from dashboard.ws.limits import Throttled
from livestream.conf import get_settings
from streampai.bodies import capped_body

logger = logging.getLogger(__name__)

# Compared against when there is no stored secret, so a miss costs what a wrong secret costs.
_DUMMY_SECRET = new_secret()
# A flood against a full queue (or of bad posts) logs one line per user per minute.
_refusals = Throttled(60.0)
# Largest primary key a URL may name (a BigAutoField); anything else is "unknown".
_MAX_PK_DIGITS = 19


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@csrf_exempt
async def webhook(request: HttpRequest, user_id: str, secret: str) -> HttpResponse:
    if request.method != "POST":
        response = _error(405, "method not allowed: POST a JSON alert")
        response["Allow"] = "POST"
        return response
    limit = get_settings().ALERT_MAX_BODY_BYTES
    body = capped_body(request, limit)
    if body is None:
        return _error(413, f"body too large: at most {limit} bytes")
    pk = await _authenticated(user_id, secret)
    if pk is None:
        return _error(404, "unknown webhook")
    conf = get_settings()
    wait = await ratelimit.take(
        ratelimit.user_bucket(pk), conf.ALERT_RATE_PER_USER, conf.ALERT_BURST_PER_USER
    )
    if wait:
        _log_refusal(pk, "over the alert rate", f"{conf.ALERT_RATE_PER_USER}/s")
        return too_many(f"too many alerts: at most {conf.ALERT_RATE_PER_USER:g} per second", wait)
    try:
        alert = parse(body)
    except Invalid as exc:
        # The field's name only: the message may quote what the sender sent.
        _log_refusal(pk, "refused an alert", f"invalid {exc.field}")
        return _error(400, str(exc))
    alert = {"id": secrets.token_hex(8), **alert, "queued_at": round(time.time(), 3)}
    try:
        queue = AlertQueue(pk)
        queued = await queue.push(alert, get_settings().ALERT_QUEUE_CAP)
    except Exception as exc:
        # A Redis error says what failed; anything else is named by its type only (its
        # text could quote the alert).
        why = repr(exc) if isinstance(exc, RedisError | OSError) else type(exc).__name__
        logger.warning("[alerts] could not queue an alert for user %s: %s", pk, why)
        return _error(503, "alert queue unavailable; retry later")
    if queued is None:
        _log_refusal(pk, "queue full", f"{get_settings().ALERT_QUEUE_CAP} alerts waiting")
        # One leaves the queue every ALERT_DISPLAY_INTERVAL seconds.
        wait = max(1, math.ceil(get_settings().ALERT_DISPLAY_INTERVAL))
        return too_many(f"too many alerts waiting: at most {get_settings().ALERT_QUEUE_CAP} are queued", wait)
    logger.info(
        "[alerts] queued alert %s (%s) for user %s: %d waiting", alert["id"], alert["kind"], pk, queued
    )
    if queue.replicated is False:  # accepted all the same: refusing would have it sent twice
        logger.warning(
            "[alerts] alert %s queued without a replica's acknowledgement: a failover now would lose it",
            alert["id"],
        )
    return JsonResponse({"id": alert["id"], "queued": queued}, status=202)


def too_many(message: str, wait: int) -> JsonResponse:
    response = _error(429, message)
    response["Retry-After"] = str(wait)
    return response


def _log_refusal(user_id: str, what: str, why: str) -> None:
    held = _refusals.due(f"{what}:{user_id}")
    if held is not None:
        more = f" ({held} more since the last line)" if held else ""
        logger.warning("[alerts] %s for user %s: %s%s", what, user_id, why, more)


async def _authenticated(user_id: str, secret: str) -> str | None:
    """The user's id if ``secret`` is their current one; None otherwise, after the same work."""
    # isascii: "²".isdigit() is True, and int("²") raises.
    ok = user_id.isascii() and user_id.isdigit() and len(user_id) <= _MAX_PK_DIGITS
    pk = int(user_id) if ok else 0
    stored = await (
        AlertWebhook.objects.filter(user_id=pk, user__is_active=True)
        .values_list("secret", flat=True)
        .afirst()
    )
    matches = hmac.compare_digest(secret.encode(), (stored or _DUMMY_SECRET).encode())
    return str(pk) if matches and stored is not None else None


@login_required
@require_POST
def rotate(request: HttpRequest) -> HttpResponse:
    """A new secret for the signed-in user (CSRF-protected form on the Stream page)."""
    user_id = request.user.pk
    if user_id is None:  # login_required rules it out; this keeps the types honest
        return HttpResponseRedirect(reverse("account_login"))
    AlertWebhook.for_user(user_id).rotate()
    logger.info("[alerts] user %s rotated their webhook secret", user_id)
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        target = reverse("dashboard:stream")
    return HttpResponseRedirect(target)
