"""A request body read no further than a cap (the webhooks: alerts/, broadcast/)."""

from __future__ import annotations

from django.http import HttpRequest


def capped_body(request: HttpRequest, limit: int) -> bytes | None:
    """The body, or None if it is over ``limit`` bytes (declared or sent; read no further).
    daphne also refuses over-long bodies while reading them (dashboard/daphne/bodylimit.py);
    this is the view's own check, for any server."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return None
    body = request.read(limit + 1)
    return None if len(body) > limit else body
