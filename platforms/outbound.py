"""The one HTTP client a worker's event loop uses for every platform call (Twitch Helix,
YouTube's Data API, OAuth token refreshes).

An httpx client builds an SSL context when it is made, reading the whole CA bundle, on the
event loop; made per call, that cost showed in the worker's profile once calls became frequent
(the ingest's /stat polls, broadcast/ingest_control.py). One client per loop pays it once, and
its pool keeps the TLS connections to the few API hosts open between calls.

The pool has no connection cap: one user's slow platform must not make another user's call
wait for a free connection. Each request still has TIMEOUT.
"""

from __future__ import annotations

import httpx

from livestream.tasks import per_loop

TIMEOUT = 10.0
LIMITS = httpx.Limits(max_connections=None, max_keepalive_connections=50, keepalive_expiry=30.0)

_shared = per_loop(lambda: httpx.AsyncClient(timeout=TIMEOUT, limits=LIMITS))


def client() -> httpx.AsyncClient:
    """This event loop's platform HTTP client (made on first use, kept while the loop lives)."""
    return _shared()
