"""Ending every open socket's presence when daphne stops gracefully (SIGTERM).

daphne means to cancel each socket's application before it exits, and each
PresenceConsumer then untracks its connection on the way out. But daphne 4.2.3's
kill_all_applications raises KeyError (and Twisted swallows it) as soon as one
entry of its connection table has no application, which is the case for about
a second after every HTTP request or WebSocket handshake: with any traffic at all,
nothing is cancelled and every connection would linger for PRESENCE_TTL, as
after kill -9. So the consumers also register here, and a Twisted before-shutdown
trigger of our own ends the presence of all that are still open. Twisted waits
for it before stopping the loop; doing it twice is harmless (untrack is idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import weakref
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class EndsPresence(Protocol):
    async def end_for_good(self) -> None: ...


_open: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False


def register(consumer: EndsPresence) -> None:
    _open.add(consumer)
    _install()


def forget(consumer: EndsPresence) -> None:
    _open.discard(consumer)


def _install() -> None:
    """Add the trigger once, and only under daphne (whose Twisted reactor is running)."""
    global _installed
    if _installed or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    reactor.addSystemEventTrigger("before", "shutdown", _end_all)
    _installed = True


def _end_all() -> Any:
    consumers = list(_open)
    if not consumers:
        return None
    from twisted.internet import defer

    logger.info("[PresenceConsumer] shutting down: ending the presence of %d open sockets", len(consumers))
    ending = asyncio.gather(*(c.end_for_good() for c in consumers), return_exceptions=True)
    return defer.Deferred.fromFuture(asyncio.ensure_future(ending))
