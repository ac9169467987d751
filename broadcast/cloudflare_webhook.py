"""Cloudflare's live input webhook: POST /hooks/cloudflare/ -> broadcast.inputs.set_input.

Cloudflare tells us when OBS connects to or leaves a live input. The body is the
documented Stream Live notification::

    {"name": ..., "text": ..., "ts": 1642074233,
     "data": {"notification_name": "Stream Live Input", "input_id": "<live input uid>",
              "event_type": "live_input.connected" | "live_input.disconnected" | ...,
              "updated_at": "2022-01-13T11:43:41.855717910Z"}}

Authentication, with LIVESTREAM["CLOUDFLARE_WEBHOOK_SECRET"], one of:

  Webhook-Signature: time=<unix>,sig1=<hex>   Stream's signature: HMAC-SHA256 with the
                                              secret of "<time>.<raw body>"; <time> within
                                              CLOUDFLARE_WEBHOOK_TOLERANCE of our clock
  cf-webhook-auth: <secret>                   what a Notifications webhook destination with
                                              a secret sends; the body's "ts" must then be
                                              within the tolerance

Both compared in constant time. Anything else is refused before the body is read as
JSON.

Order: webhooks can arrive late or twice (Cloudflare retries). The event's own time
(``data.updated_at``, else the signature's time) is kept per live input in Redis
(``keys.cloudflare_event``): an event not newer than the last one applied is dropped, so a
late "connected" cannot undo a later "disconnected", and a replay within the tolerance
changes nothing.

Answers (JSON, never 5xx for a bad request):

  200 {"input": "<uid>", "state": "connected"}   recorded (set_input)
  200 {"ignored": "<why>"}     signed, but nothing to do: another event type, an input no
                               user has, or an event older than the last one applied
                               (Cloudflare would retry anything but 2xx)
  400 {"error": ...}           malformed Webhook-Signature, body not the notification
  401 {"error": ...}           unsigned, wrong signature or secret, too old or too new
  404 {"error": ...}           Cloudflare webhooks not enabled (another backend, no secret)
  405, 413                     not POST; body over CLOUDFLARE_WEBHOOK_MAX_BODY_BYTES
  503 {"error": ...}           Redis or the database unreachable: Cloudflare retries later

Refusals log one WARNING line per reason per minute (never a header's value or the body).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from broadcast import inputs
from dashboard.ws.limits import Throttled
from livestream import keys
from livestream.conf import get_settings
from livestream.redis import get_redis, run_script, script
from streampai.bodies import capped_body

logger = logging.getLogger("broadcast.cloudflare")

SIGNATURE_HEADER = "HTTP_WEBHOOK_SIGNATURE"
NOTIFICATION_AUTH_HEADER = "HTTP_CF_WEBHOOK_AUTH"
EVENTS = {"live_input.connected": True, "live_input.disconnected": False}
_refusals = Throttled(60.0)
# How long the last applied event's time is kept per live input (seconds).
EVENT_MEMORY = 7 * 86400
_UPDATED_AT = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")

# KEYS: the input's last-event key. ARGV: this event's time (Unix ns, 20 digits), memory (s).
# Returns 1 (newer: recorded) or 0 (not newer than the last applied: drop it).
_NEWER = script(
    "broadcast.cloudflare_event_newer",
    """
local last = redis.call('GET', KEYS[1])
if last and last >= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
""",
)
# KEYS: the input's last-event key. ARGV: the time _NEWER recorded. Forget it (the event
# could not be applied: Cloudflare's retry must not be dropped as old).
_FORGET = script(
    "broadcast.cloudflare_event_forget",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
""",
)


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def signature(secret: str, at: int | str, body: bytes) -> str:
    """The hex HMAC-SHA256 Cloudflare puts in ``sig1``: of "<time>.<body>" with the secret."""
    return hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()


def parse_signature(header: str) -> tuple[int, list[str]]:
    """``time=<unix>,sig1=<hex>[,sig1=...]`` -> (time, [sig1 values]); Refused 400 if malformed."""
    at: int | None = None
    sigs: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise Refused(400, "malformed Webhook-Signature: expected time=<unix>,sig1=<hex>")
        if name == "time" and value.isdigit() and len(value) <= 12:
            at = int(value)
        elif name == "sig1" and value:
            sigs.append(value.lower())
    if at is None or not sigs:
        raise Refused(400, "malformed Webhook-Signature: expected time=<unix>,sig1=<hex>")
    return at, sigs


def _fresh(at: float, tolerance: float, what: str) -> None:
    skew = time.time() - at
    if skew > tolerance:
        raise Refused(401, f"{what} is too old ({int(skew)} s; at most {tolerance:g} s)")
    if skew < -tolerance:
        raise Refused(401, f"{what} is in the future ({int(-skew)} s ahead)")


def authenticate(meta: dict[str, Any], body: bytes, secret: str, tolerance: float) -> None:
    """Return if the request is Cloudflare's, else raise Refused (401/400)."""
    header = meta.get(SIGNATURE_HEADER)
    if header:
        at, sigs = parse_signature(str(header))
        expected = signature(secret, at, body)
        # Every candidate compared (no early exit on the first mismatch).
        matched = [hmac.compare_digest(expected.encode(), sig.encode()) for sig in sigs]
        if not any(matched):
            raise Refused(401, "bad Webhook-Signature")
        _fresh(at, tolerance, "Webhook-Signature time")
        return
    shared = meta.get(NOTIFICATION_AUTH_HEADER)
    if shared:
        if not hmac.compare_digest(str(shared).encode(), secret.encode()):
            raise Refused(401, "bad cf-webhook-auth")
        ts = _notification(body).get("ts")
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise Refused(400, "notification without a numeric ts")
        _fresh(float(ts), tolerance, "notification ts")
        return
    raise Refused(401, "unsigned: a Webhook-Signature (or cf-webhook-auth) header is required")


def _notification(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise Refused(400, "body is not JSON") from None
    if not isinstance(parsed, dict):
        raise Refused(400, "body is not a JSON object")
    return parsed


def event_of(body: bytes) -> tuple[str, str, int | None]:
    """(input uid, event type, event time or None) of a live input notification;
    Refused 400 if it is not one."""
    data = _notification(body).get("data")
    if not isinstance(data, dict):
        raise Refused(400, "notification without a data object")
    uid, event = data.get("input_id"), data.get("event_type")
    if not isinstance(uid, str) or not uid or len(uid) > 128 or not isinstance(event, str):
        raise Refused(400, "notification without data.input_id and data.event_type")
    # The original project saw "stream.live_input.*".
    return uid, event.removeprefix("stream."), parse_time(data.get("updated_at"))


def parse_time(value: Any) -> int | None:
    """Unix nanoseconds of an RFC 3339 time ("2022-01-13T11:43:41.855717910Z"), exactly: two
    events a nanosecond apart stay ordered (a float of seconds would merge them)."""
    match = _UPDATED_AT.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    try:
        seconds = int(datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp())
    except ValueError:
        return None
    return seconds * 10**9 + int((fraction or "").ljust(9, "0"))


def signed_at(meta: dict[str, Any], body: bytes) -> int:
    """When Cloudflare sent it (Unix ns): the signature's time, else the body's ts (both checked)."""
    header = meta.get(SIGNATURE_HEADER)
    if header:
        return parse_signature(str(header))[0] * 10**9
    ts = _notification(body).get("ts")
    return int(ts * 10**9) if isinstance(ts, int | float) else time.time_ns()


def _refuse(status: int, message: str) -> JsonResponse:
    held = _refusals.due(f"cloudflare-webhook:{status}:{message[:40]}")
    if held is not None:
        more = f" ({held} more since the last line)" if held else ""
        logger.warning("[cloudflare] webhook refused (%d): %s%s", status, message, more)
    return JsonResponse({"error": message}, status=status)


async def _user_of(uid: str) -> str | None:
    from broadcast.backends.cloudflare import BACKEND
    from broadcast.models import StreamIngest

    user_id = (
        await StreamIngest.objects.filter(backend=BACKEND, remote_id=uid)
        .values_list("user_id", flat=True)
        .afirst()
    )
    return None if user_id is None else str(user_id)


@csrf_exempt
async def webhook(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = JsonResponse(
            {"error": "method not allowed: Cloudflare POSTs its notifications"}, status=405
        )
        response["Allow"] = "POST"
        return response
    conf = get_settings()
    secret = conf.CLOUDFLARE_WEBHOOK_SECRET
    if conf.BROADCAST_BACKEND != "cloudflare" or not secret:
        return JsonResponse({"error": "Cloudflare webhooks are not enabled here"}, status=404)
    body = capped_body(request, conf.CLOUDFLARE_WEBHOOK_MAX_BODY_BYTES)
    if body is None:
        return _refuse(413, f"body too large: at most {conf.CLOUDFLARE_WEBHOOK_MAX_BODY_BYTES} bytes")
    try:
        authenticate(request.META, body, secret, conf.CLOUDFLARE_WEBHOOK_TOLERANCE)
        uid, event, happened = event_of(body)
        happened = happened if happened is not None else signed_at(request.META, body)
    except Refused as exc:
        return _refuse(exc.status, exc.message)
    if event not in EVENTS:
        return JsonResponse({"ignored": f"event {event[:64]!r} is not an input connect or disconnect"})
    try:
        user_id = await _user_of(uid)
    except Exception as exc:  # the database is down: Cloudflare retries a 5xx later
        logger.warning("[cloudflare] webhook: could not look up live input %s: %r", uid, type(exc).__name__)
        return JsonResponse({"error": "input lookup unavailable; retry later"}, status=503)
    if user_id is None:
        logger.info("[cloudflare] webhook for live input %s, which no user has: ignored", uid)
        return JsonResponse({"ignored": "unknown live input"})
    connected = EVENTS[event]
    stamp = f"{happened:020d}"  # fixed width: compared as strings in Redis (exact, unlike floats)
    try:
        redis = get_redis()
        if not int(await run_script(redis, _NEWER, [keys.cloudflare_event(uid)], stamp, EVENT_MEMORY)):
            logger.info(
                "[cloudflare] webhook: %s of live input %s is older than the last event: ignored", event, uid
            )
            return JsonResponse({"ignored": "older than the last event applied for this input"})
        try:
            await inputs.set_input(user_id, connected)
        except Exception:
            await run_script(redis, _FORGET, [keys.cloudflare_event(uid)], stamp)
            raise
    except Exception as exc:  # Redis down: Cloudflare retries a 5xx later
        logger.warning(
            "[cloudflare] webhook: could not record input of user %s: %r", user_id, type(exc).__name__
        )
        return JsonResponse({"error": "input state unavailable; retry later"}, status=503)
    state = inputs.CONNECTED if connected else inputs.DISCONNECTED
    logger.info("[cloudflare] webhook: input of user %s %s (live input %s)", user_id, state, uid)
    return JsonResponse({"input": uid, "state": state})
