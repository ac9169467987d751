"""The ingest's control socket (nginx's /stat and /control, broadcast/ingest.py), as one worker asks it.

* One HTTP client per event loop and socket, kept: an httpx client builds an SSL context when
  it is made (the CA bundle is read even for plain HTTP over a unix socket). Made per request,
  that was three quarters of a worker's CPU with 20 live users, and it ran on the event loop.
* One /stat for every user: every live user's CloudflareManager polls whether its publisher is
  connected. A reply younger than STAT_MAX_AGE answers them all, and while one request is on
  its way the others wait for it instead of sending their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import httpx

from livestream.tasks import per_loop

logger = logging.getLogger("livestream.presence_manager")  # the worker's own log lines

TIMEOUT = 2.0
# How old a /stat reply may be to answer a poll (seconds); polls come every INPUT_POLL_INTERVAL
# (5 s) per live user, and a callback, not a poll, is how a publish is normally seen.
STAT_MAX_AGE = 1.0


def publishing(stat_xml: str) -> set[str]:
    """Names of the streams with a publisher, from nginx-rtmp's /stat XML."""
    try:
        root = ElementTree.fromstring(stat_xml)
    except ElementTree.ParseError:
        return set()
    names = set()
    for stream in root.iter("stream"):
        name = stream.findtext("name")
        if name and stream.find("publishing") is not None:
            names.add(name)
    return names


@dataclass
class _Control:
    clients: dict[Path, httpx.AsyncClient] = field(default_factory=dict)
    # per socket: (when, publishing names; None: no answer), and the request on its way
    stat: dict[Path, tuple[float, set[str] | None]] = field(default_factory=dict)
    stat_pending: dict[Path, asyncio.Future[set[str] | None]] = field(default_factory=dict)


_control = per_loop(_Control)


def _client(sock: Path) -> httpx.AsyncClient:
    state = _control()
    client = state.clients.get(sock)
    if client is None:
        client = state.clients[sock] = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(sock)), timeout=TIMEOUT
        )
    return client


async def request(sock: Path, path: str) -> httpx.Response | None:
    """GET ``path`` on the ingest's control socket; None (and one log line) if it cannot be had."""
    if not sock.exists():  # noqa: ASYNC240 (one stat of a local socket file: no blocking I/O)
        return None
    try:
        return await _client(sock).get("http://ingest" + path)
    except httpx.HTTPError as exc:
        logger.warning("[broadcast] ingest control %s failed: %r", path.split("?")[0], type(exc).__name__)
        return None


async def publishing_now(sock: Path) -> set[str] | None:
    """The stream names with a publisher (None: the ingest did not answer), from a /stat at
    most STAT_MAX_AGE old, shared by every caller in this event loop."""
    state = _control()
    now = time.monotonic()
    known = state.stat.get(sock)
    if known is not None and now - known[0] < STAT_MAX_AGE:
        return known[1]
    if sock in state.stat_pending:
        return await asyncio.shield(state.stat_pending[sock])
    pending = state.stat_pending[sock] = asyncio.get_running_loop().create_future()
    names: set[str] | None = None
    try:
        response = await request(sock, "/stat")
        if response is not None and response.status_code == 200:
            names = publishing(response.text)
        state.stat[sock] = (time.monotonic(), names)
        return names
    finally:
        # Cancelled on the way, the callers waiting for it get "no answer", not the cancel.
        pending.set_result(names)
        del state.stat_pending[sock]
