"""Handing a stopping daphne's sockets over to the next one (SIGTERM, a rolling deploy).

daphne means to cancel each socket's application before it exits. But daphne
4.2.3's kill_all_applications raises KeyError (and Twisted swallows it) as soon
as one entry of its connection table has no application, which is the case for
about a second after every HTTP request or WebSocket handshake: with any traffic
at all, nothing is cancelled and every connection would linger for PRESENCE_TTL,
as after kill -9. So the consumers register here, and a Twisted before-shutdown
trigger of our own (Twisted waits for it before stopping the loop) hands them off:

  1. new handshakes are refused (the tracker is ``stopping``) and the heartbeat
     loop stops;
  2. each socket is closed with 1012 ("service restart"; sent on daphne's protocol
     directly, as daphne's own close accepts only 1000 and 3000-4999) and the reason
     "spread=<s>" (``reconnect_spread``: 2 s for a few sockets, N /
     HANDOFF_RECONNECT_RATE for many). presence.js reconnects after a random
     0.1..s, so thousands of tabs arrive at a rate the daphnes left can take, then
     backs off as usual;
  3. every open connection is untracked, BATCH per round trip, with the cleanup
     delay CLEANUP_TIMEOUT + HANDOFF_GRACE instead of CLEANUP_TIMEOUT: the users'
     managers keep running while their pages reconnect to another daphne (a join
     cancels the pending cleanup; a tab already back leaves no cleanup to cancel);
     a tab that does not come back stops its manager CLEANUP_TIMEOUT +
     HANDOFF_GRACE after the deploy;
  4. it waits (at most CLOSE_WAIT, 2 s) for the closing handshakes, so the close
     frames leave before the process does, then ends the connections of the tabs
     that did not answer with a FIN behind their close frame (never an RST, which
     would throw away a frame not sent yet).

A consumer that daphne does cancel meanwhile skips its own untrack (it is
``handed_off``). Untrack is idempotent either way.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import weakref
from typing import Any

from dashboard.daphne.adapter import end_closing, is_closed
from livestream.conf import get_settings

logger = logging.getLogger("dashboard.shutdown")

_open: weakref.WeakSet[Any] = weakref.WeakSet()
_installed = False


def handoff_delay() -> float:
    conf = get_settings()
    return conf.CLEANUP_TIMEOUT + conf.HANDOFF_GRACE


# The reconnect window a hand-off asks for (seconds): 2 s (presence.js' own) for a
# few sockets, longer for many, so the daphnes left take them at HANDOFF_RECONNECT_RATE
# instead of refusing a wave that would come back, backing off, for much longer.
MIN_SPREAD, MAX_SPREAD = 2.0, 30.0
# How long the tabs have to answer the close once the untracks are done (seconds).
CLOSE_WAIT = 2.0


def reconnect_spread(sockets: int) -> float:
    return min(MAX_SPREAD, max(MIN_SPREAD, sockets / get_settings().HANDOFF_RECONNECT_RATE))


def register(consumer: Any) -> None:
    _open.add(consumer)
    _install()


def forget(consumer: Any) -> None:
    _open.discard(consumer)


def _install() -> None:
    """Add the trigger once, and only under daphne (whose Twisted reactor is running)."""
    global _installed
    if _installed or "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    # twisted types the reactor as its zope Interface, whose methods have no ``self``: without
    # the mypy-zope plugin, mypy reads "before" as self and every argument one place off.
    reactor.addSystemEventTrigger("before", "shutdown", _hand_off_all)  # type: ignore[arg-type]
    _installed = True


def _hand_off_all() -> Any:
    from twisted.internet import defer

    consumers = list(_open)
    # Synchronously, before any consumer runs again: daphne may have cancelled some of
    # them already (kill_all_applications), and a cancelled consumer's own untrack
    # must neither run with the normal delay nor drop its ref before we read it.
    pairs = take_refs(consumers)
    return defer.Deferred.fromFuture(asyncio.ensure_future(hand_off(consumers, pairs)))


async def _closing_handshakes(consumers: list[Any], deadline: float) -> None:
    """Wait until ``deadline`` for the tabs to answer the close; end the others with a FIN
    behind their close frame (the process exits next, and daphne would only drop them)."""
    protocols = [c._protocol() for c in consumers]  # found once, not on every poll
    while time.monotonic() < deadline:
        if all(is_closed(p) for p in protocols):
            return
        await asyncio.sleep(0.02)
    late = [p for p in protocols if not is_closed(p)]
    for protocol in late:
        end_closing(protocol)
    logger.info(
        "[PresenceConsumer] hand-off: %d sockets did not answer the close within %.1fs; closed after it",
        len(late),
        CLOSE_WAIT,
    )
    await asyncio.sleep(0.05)  # the FINs go out


def take_refs(consumers: list[Any]) -> list[tuple[str, str]]:
    """Mark ``consumers`` handed off and take their (user id, ref) to untrack here."""
    pairs = []
    for consumer in consumers:
        consumer.handed_off = True
        ref, user_id = consumer.ref, consumer.user_id
        consumer.ref = None
        if ref is not None and user_id is not None:
            pairs.append((user_id, ref))
    return pairs


async def hand_off(consumers: list[Any], pairs: list[tuple[str, str]]) -> None:
    """Close ``consumers`` with 1012, then untrack ``pairs`` with the hand-off delay; never raises."""
    from dashboard.ws.tracker import BATCH, get_tracker

    tracker = get_tracker()
    tracker.stopping = True
    for _, ref in pairs:
        tracker.forget(ref)
    delay = handoff_delay()
    started = time.monotonic()
    logger.info(
        "[PresenceConsumer] shutting down: handing off %d open sockets (their cleanup in %.1fs)",
        len(consumers),
        delay,
    )
    # The closes first: each tab starts its reconnect window now, not after thousands of
    # untracks. The order is safe either way: presence is per connection, so a tab back on
    # another daphne before its untrack here only leaves its user one connection more
    # for a moment (and the untrack then schedules no cleanup).
    spread = reconnect_spread(len(consumers))
    failed: list[Exception] = []
    for consumer in consumers:
        try:
            await consumer.close_for_restart(spread)
        except Exception as exc:  # that tab sees the connection drop instead, and reconnects all the same
            failed.append(exc)
    if failed:
        logger.warning(
            "[PresenceConsumer] hand-off: %d sockets not closed with 1012 (first: %r)", len(failed), failed[0]
        )
    store = tracker.store()
    for start in range(0, len(pairs), BATCH):
        batch = pairs[start : start + BATCH]
        for attempt in range(5):
            try:
                await store.untrack_many(batch, cleanup_delay=delay)
                break
            except Exception as exc:  # their entries expire after PRESENCE_TTL instead
                logger.warning(
                    "[PresenceConsumer] hand-off untrack failed (attempt %d): %r", attempt + 1, exc
                )
                await asyncio.sleep(0.2)
    await _closing_handshakes(consumers, time.monotonic() + CLOSE_WAIT)
    logger.info(
        "[PresenceConsumer] handed off %d sockets in %.2fs", len(consumers), time.monotonic() - started
    )
