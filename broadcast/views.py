"""The self-hosted ingest's callbacks (nginx-rtmp ``on_publish`` / ``on_publish_done``).

nginx POSTs form fields (``app``, ``name``, ``addr``, ``clientid``, ...) where ``name`` is the
stream key OBS sent. Only the local ingest may call: the path carries
``broadcast.ingest.callback_secret()`` and the request must come from loopback.

* publish: a user's current key -> ``302 Location: u<user id>`` (nginx renames the stream, so
  the key goes no further), the input marked connected (broadcast.inputs.set_input); any
  other key -> 403, logged with the client's address and never the key.
* publish_done: the input marked disconnected once the user has no publish left. Publishes
  are recorded by nginx's client id (``broadcast.inputs.publish_started``), not by key: a key
  replaced meanwhile still ends its publish, and a second OBS on the same key (which nginx
  refuses as "already publishing", and reports done) does not end the first one's.

The Cloudflare backend's webhook lives beside these (helper "cloudflare").
"""

from __future__ import annotations

import hmac
import logging

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from broadcast import ingest as nginx
from broadcast.inputs import publish_ended, publish_started, set_input
from broadcast.models import StreamIngest, key_hash

logger = logging.getLogger("broadcast.ingest")

LOOPBACK = {"127.0.0.1", "::1"}
# A key longer than this is not one of ours (they are ~46 characters); not even hashed.
MAX_KEY = 200


def _allowed(request: HttpRequest, secret: str) -> bool:
    return request.META.get("REMOTE_ADDR") in LOOPBACK and hmac.compare_digest(
        secret, nginx.callback_secret()
    )


@csrf_exempt
@require_POST
async def publish(request: HttpRequest, secret: str) -> HttpResponse:
    if not _allowed(request, secret):
        return HttpResponse(status=404)
    key = request.POST.get("name", "")
    addr = request.POST.get("addr", "?")[:64]
    row = None
    if 0 < len(key) <= MAX_KEY and nginx.user_of_stream(key) is None:
        row = await StreamIngest.objects.filter(key_hash=key_hash(key), backend="selfhosted").afirst()
    if row is None:
        logger.warning("[broadcast] ingest refused a publish from %s: unknown or old stream key", addr)
        return HttpResponse("unknown stream key", status=403)
    user_id = str(row.user_id)
    await publish_started(user_id, _client(request))
    await set_input(user_id, True)
    logger.info("[broadcast] ingest: user %s publishing from %s", user_id, addr)
    response = HttpResponse(status=302)
    response["Location"] = nginx.stream_name(user_id)
    return response


@csrf_exempt
@require_POST
async def publish_done(request: HttpRequest, secret: str) -> HttpResponse:
    if not _allowed(request, secret):
        return HttpResponse(status=404)
    user_id, left = await publish_ended(_client(request))
    if user_id is not None and left == 0:
        await set_input(user_id, False)
        logger.info("[broadcast] ingest: user %s stopped publishing", user_id)
    return HttpResponse(status=200)


def _client(request: HttpRequest) -> str:
    """nginx's id of the RTMP connection (a counter of this nginx run)."""
    return request.POST.get("clientid", "")[:32]
