"""One Redis pub/sub connection per daphne process, shared by all its dashboard sockets.

The worker and the web views publish to per-audience channels (livestream/pushes/channels.py):

  push.user_channel(user_id)       manager status and session counts (live sockets)
  push.session_channel(key)        {"type": "session.ended"}: that browser session logged out
  control_channel(user_id)         {"type": "user.deactivated"}: the account was deactivated;
                                   {"type": "component.event" | "component.reply", ...}:
                                   livestream/components/emitter.py (every socket, live or not)

A socket ``join``s the channels it needs; the hub SUBSCRIBEs a channel when its first
local socket joins (one SUBSCRIBE command for all the channels a socket adds, and
``join`` returns once Redis confirmed them: a socket is subscribed before its
connection is tracked, so the worker never publishes into the gap) and UNSUBSCRIBEs
when its last one leaves (batched, never waited for). Each message is decoded once
and handed to the local sockets of its channel through an explicit allowlist of
message types (``handlers``): anything else is dropped with one log line, never
dispatched, whatever the socket's methods are called. Delivery never waits for a
socket: one whose send waits gets its messages, in order, in a task of its own
(Hub._deliver), while the others get theirs at once.

If the connection drops (Redis restarting), the hub logs once, reconnects with
backoff (0.1 s doubling to 2 s) and re-subscribes everything in one command; the
sockets stay open. Messages published meanwhile are lost: status pushes repeat
every second, a lost ``session.ended`` leaves that tab open until it reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from livestream import keys

logger = logging.getLogger("dashboard.hub")

# Messages handed to sockets between two yields to the loop.
YIELD_EVERY = 50
# Channels per SUBSCRIBE / UNSUBSCRIBE command (one round trip each).
BATCH = 500
# A subscriber only reads, so a connection the network silently lost (a Redis restarted
# behind a proxy or on another host, a failover) would wait for messages for ever: a
# PING when it has been quiet this long (seconds) finds out, and the hub reconnects.
HEALTH_CHECK_INTERVAL = 2.0
# Messages queued for one socket while its previous delivery waits, at most.
BACKLOG = 100


def control_channel(user_id: str) -> str:
    """Per-user messages for every socket of that user: deactivation, component events
    and command replies (livestream/components/emitter.py)."""
    return keys.control(user_id)


def named_client(role: str, **overrides: Any) -> Any:
    """A fresh client from the project's factory whose connections are named
    ``dashboard:<pid>:<role>`` (CLIENT SETNAME), so CLIENT LIST tells which process
    holds them. ``overrides``: connection kwargs (e.g. ``max_connections``)."""
    from streampai import redis_internals
    from streampai.redisconf import redis_client

    client = redis_client(**overrides)
    kwargs = getattr(client.connection_pool, "connection_kwargs", None)
    if isinstance(kwargs, dict) and redis_internals.enabled(redis_internals.CONNECTION_NAMES):
        kwargs["client_name"] = f"dashboard:{os.getpid()}:{role}"
    return client


class Receiver(Protocol):
    """What the hub hands messages to: methods named in the hub's ``handlers``."""


class Hub:
    def __init__(self, handlers: Mapping[str, str]) -> None:
        # message type -> method name of the receiver (the allowlist)
        self.handlers = dict(handlers)
        self.members: dict[str, set[Any]] = {}
        self._sent: set[str] = set()  # SUBSCRIBE sent on the current connection, no UNSUBSCRIBE since
        # Channels whose local membership became or stopped being empty since the writer last
        # looked: it compares only these with ``_sent`` (not every channel on every join).
        self._changed: set[str] = set()
        self._confirmed: set[str] = set()
        # SUBSCRIBE replies still due per channel: a channel subscribed, unsubscribed and
        # subscribed again is ready only at the reply to the last SUBSCRIBE.
        self._due: dict[str, int] = {}
        self._ready: dict[str, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._pubsub: Any = None
        self._client: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self.dropped = 0
        # Sockets whose delivery waits: the messages queued behind it (see _deliver).
        self._behind: dict[Any, collections.deque[tuple[str, Any, Any]]] = {}
        self._finishing: set[asyncio.Task[None]] = set()
        self.overflowed = 0  # messages dropped for a socket already BACKLOG behind

    # -- sockets -------------------------------------------------------------

    async def join(self, receiver: Any, channels: Iterable[str]) -> None:
        """Deliver ``channels``' messages to ``receiver``; returns once all are subscribed."""
        self._start()
        loop = asyncio.get_running_loop()
        waits = []
        for channel in channels:
            members = self.members.get(channel)
            if members is None:
                members = self.members[channel] = set()
                self._changed.add(channel)
            members.add(receiver)
            if channel not in self._confirmed:
                future = self._ready.get(channel)
                if future is None or future.done():
                    future = self._ready[channel] = loop.create_future()
                waits.append(future)
                if channel not in self._sent:
                    self._wake.set()
        if waits:
            await asyncio.gather(*(asyncio.shield(w) for w in waits))

    def leave(self, receiver: Any, channels: Iterable[str]) -> None:
        """Stop delivering to ``receiver``; a channel nobody here needs is unsubscribed later."""
        for channel in channels:
            members = self.members.get(channel)
            if members is None:
                continue
            members.discard(receiver)
            if not members:
                del self.members[channel]
                self._changed.add(channel)
                self._wake.set()

    def subscribed(self) -> set[str]:
        return set(self._confirmed)

    # -- the connection ------------------------------------------------------

    def _start(self) -> None:
        if not self._tasks or all(t.done() for t in self._tasks):
            self._tasks = [asyncio.ensure_future(self._run())]

    async def _run(self) -> None:
        from streampai.redisconf import no_retry

        backoff = 0.1
        lost_at: float | None = None
        while True:
            try:
                # No redis-py retry here: it would reconnect and re-subscribe by itself after a
                # short outage, unseen (no log line, and the hub's own bookkeeping of what is
                # subscribed on this connection skipped). Every loss comes through this loop.
                self._client = named_client(
                    "pubsub", health_check_interval=HEALTH_CHECK_INTERVAL, retry=no_retry()
                )
                self._pubsub = self._client.pubsub()
                # An initial PING proves the connection (and gets the pubsub connection made).
                await self._pubsub.connect()
                self._sent.clear()
                self._confirmed.clear()
                self._due.clear()
                self._changed = set(self.members)  # a new connection: subscribe everything again
                writer = asyncio.ensure_future(self._write_loop())
                try:
                    self._wake.set()
                    first = True
                    handled = 0
                    while True:
                        message = await self._pubsub.get_message(timeout=1.0)
                        if first and lost_at is not None and self._pubsub.connection is not None:
                            logger.warning(
                                "[hub] Redis pub/sub back after %.1fs; re-subscribing %d channels",
                                time.monotonic() - lost_at,
                                len(self.members),
                            )
                            lost_at, backoff = None, 0.1
                        first = False
                        if message is not None:
                            await self._handle(message)
                            handled += 1
                            if handled % YIELD_EVERY == 0:
                                # Buffered messages are read without suspending: a worker's
                                # pass of a thousand pushes must not hold up the sockets' own
                                # handlers (a close's untrack: the cleanup clock starts there).
                                await asyncio.sleep(0)
                        elif writer.done():
                            writer.result()  # raises what broke the writer
                finally:
                    writer.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if lost_at is None:
                    lost_at = time.monotonic()
                    logger.warning("[hub] Redis pub/sub connection lost: %r; reconnecting", exc)
                await self._close_connection()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _write_loop(self) -> None:
        """Send what ``members`` now needs: SUBSCRIBE new channels, UNSUBSCRIBE unused ones."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            changed, self._changed = self._changed, set()
            add = [c for c in changed if c in self.members and c not in self._sent]
            drop = [c for c in changed if c not in self.members and c in self._sent]
            for start in range(0, len(add), BATCH):
                chunk = add[start : start + BATCH]
                self._sent.update(chunk)
                for channel in chunk:
                    self._due[channel] = self._due.get(channel, 0) + 1
                # redis-py's own subscribe(): it remembers the channels, so a reconnect it
                # makes by itself (its retry) re-subscribes them too.
                await self._pubsub.subscribe(*chunk)
            for start in range(0, len(drop), BATCH):
                chunk = drop[start : start + BATCH]
                self._sent.difference_update(chunk)
                self._confirmed.difference_update(chunk)
                await self._pubsub.unsubscribe(*chunk)

    async def _close_connection(self) -> None:
        self._sent.clear()
        self._confirmed.clear()
        self._due.clear()
        pubsub, client, self._pubsub, self._client = self._pubsub, self._client, None, None
        for closing in (pubsub, client):
            if closing is not None:
                with contextlib.suppress(Exception):  # already broken
                    await closing.aclose()

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if not isinstance(channel, str):
            return  # pongs name no channel
        if kind == "subscribe":
            due = self._due.get(channel, 0) - 1
            if due > 0:
                self._due[channel] = due
                return
            self._due.pop(channel, None)
            if channel in self._sent:
                self._confirmed.add(channel)
                future = self._ready.pop(channel, None)
                if future is not None and not future.done():
                    future.set_result(None)
            return
        if kind != "message":
            return  # unsubscribe confirmations, pongs
        receivers = self.members.get(channel)
        if not receivers:
            return
        raw = message.get("data")
        try:
            event = json.loads(raw) if isinstance(raw, str | bytes) else None
        except (TypeError, ValueError, RecursionError):
            event = None
        kind_of = event.get("type") if isinstance(event, dict) else None
        name = self.handlers.get(kind_of) if isinstance(kind_of, str) else None
        if name is None:
            self.dropped += 1
            logger.warning(
                "[hub] dropped a message of type %.100r on %r (not a dashboard message)",
                event.get("type") if isinstance(event, dict) else raw,
                channel,
            )
            return
        for receiver in list(receivers):
            self._deliver(receiver, name, event, raw)

    # -- delivery: never waits for a socket ------------------------------------

    def _deliver(self, receiver: Any, name: str, event: Any, raw: Any) -> None:
        """Hand one message to one socket without waiting for it.

        The handler runs at once, in this call: under daphne a send only queues bytes, so
        it ends without ever suspending. A handler that does suspend (a send that waits:
        another ASGI server's backpressure, a stuck middleware) is finished in a task of
        its own, and that socket's next messages queue behind it, in order (at most
        BACKLOG; beyond that they are dropped and counted: such a tab is about to be
        closed as too slow anyway). Nothing one socket does holds up the others.
        """
        queued = self._behind.get(receiver)
        if queued is not None:
            if len(queued) < BACKLOG:
                queued.append((name, event, raw))
            else:
                self.overflowed += 1
            return
        coro = getattr(receiver, name)(event, raw)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return  # delivered without waiting: the usual case
        except Exception:
            logger.exception("[hub] handler %s failed", name)
            return
        self._behind[receiver] = collections.deque()
        task = asyncio.ensure_future(self._finish(receiver, name, coro, waiting_on))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(self, receiver: Any, name: str, coro: Any, waiting_on: Any) -> None:
        """Finish a delivery that waits, then the socket's messages queued behind it."""
        try:
            try:
                await _resume(coro, waiting_on)
            except Exception:
                logger.exception("[hub] handler %s failed", name)
            queued = self._behind[receiver]
            while queued:
                name, event, raw = queued.popleft()
                try:
                    await getattr(receiver, name)(event, raw)
                except Exception:
                    logger.exception("[hub] handler %s failed", name)
        finally:
            self._behind.pop(receiver, None)

    async def aclose(self) -> None:
        for task in [*self._tasks, *self._finishing]:
            task.cancel()
        await self._close_connection()


async def _resume(coro: Any, waiting_on: Any) -> None:
    """Run ``coro`` to its end after its first step (which suspended on ``waiting_on``),
    the way an asyncio Task would: wait for the future it waits on, then let it go on
    (it reads the future's result or exception itself); a cancellation of ours is
    thrown into it."""
    while True:
        try:
            if waiting_on is None:  # a bare yield: one round of the loop
                await asyncio.sleep(0)
            elif asyncio.isfuture(waiting_on):
                waiting_on._asyncio_future_blocking = False  # we wait on it for the coroutine
                with contextlib.suppress(Exception):
                    await waiting_on
            else:
                waiting_on = coro.throw(RuntimeError(f"handler yielded {waiting_on!r}, not a future"))
                continue
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # we are cancelled: so is the handler
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return
                continue
            # Else only the future it waited on was cancelled: the handler sees that itself.
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub(handlers: Mapping[str, str]) -> Hub:
    """This process's hub (one per event loop: daphne has one; tests have one per test)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(handlers)
    return hub
