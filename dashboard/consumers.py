"""The dashboard's WebSocket: one presence entry per open connection.

connect    -> refuse anonymous users and cross-origin handshakes before anything
              is written (``handshake_rejection``), and handshakes over the per-IP
              rate (HANDSHAKE_RATE) or while this daphne is stopping; subscribe
              the socket's channels on this process's hub (dashboard/ws/hub.py);
              track the connection (dashboard/ws/tracker.py: batched, one EVALSHA for
              everything queued); then accept. A connection over
              MAX_SOCKETS_PER_USER is untracked, accepted and closed with 4029.
heartbeat  -> none per socket: the process's tracker refreshes all of its open
              connections every HEARTBEAT_INTERVAL in batches.
disconnect -> forget (heartbeat set), queue the untrack (retried in the background
              until it succeeds), leave the hub. Never blocks on anything slow:
              it waits at most UNTRACK_WAIT for the untrack, then lets it finish in
              the background.
pushes     -> from the hub, by an explicit allowlist (HUB_HANDLERS): the user's
              manager status and session count are forwarded to live sockets
              (``?live=1``) as published; ``session.ended`` (logout, dashboard/auth/sessions.py)
              closes with 4001; ``user.deactivated`` closes with 4003. Component
              events go to every socket of the user (live or not), in order; the
              sticky ones came back with the track and are sent right after accept,
              then whatever arrived meanwhile. A socket with more than
              EVENT_SEND_BUFFER bytes unsent is closed (4008): a slow or dead tab
              never holds daphne or the worker up, and reconnects to the sticky state.
commands   -> ``{"type": "command", ...}`` frames go through dashboard/ws/commands.py to
              the user's running manager; the reply comes back to this socket only.

The checks before anything is written are in dashboard/ws/handshake.py, daphne's
transport below ASGI in dashboard/daphne/adapter.py. This is the one object daphne runs
per socket; its handlers share the connection's state: connect, frames, hub pushes, and
the four ways a socket ends.

Redis round trips per connect: one SUBSCRIBE (only when this process had no socket
on those channels yet) and one share of a batched track (which also returns the
user's sticky component events); per disconnect: one share
of a batched untrack (plus a batched UNSUBSCRIBE when it was the channel's last
socket here). Session counts are the worker's job (coalesced), not the socket's.

Track before accept, not after: once the browser sees the socket open, the
connection is present (a handshake that completes is never a tab the worker does
not know about), a connect that cannot reach Redis is refused (the page backs off
and retries) instead of being an open socket nobody tracks, and the per-user cap is
decided before the socket is used.

Channels plumbing left out on purpose: no channel layer (``__call__`` reads only
daphne's queue, so no channel or receive task per socket and no group round
trips), and no ``aclose_old_connections`` hop to a thread before every message
(Channels 4.2+ does it in ``dispatch`` for handlers that use the ORM; these never
do: the auth middleware loaded the user before the consumer starts).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from dashboard.auth import revocation
from dashboard.daphne import shutdown
from dashboard.daphne.adapter import (
    close_for_restart,
    daphne_protocol,
    daphne_send,
    pause_reading,
    small_receive_buffer,
    unsent_bytes,
)
from dashboard.ws.commands import SocketCommands
from dashboard.ws.handshake import handshake_limiter, handshake_rejection, refuse_log
from dashboard.ws.hub import control_channel, get_hub
from dashboard.ws.limits import TokenBucket
from dashboard.ws.live import SESSION_ENDED, wants_pushes
from dashboard.ws.tracker import get_tracker
from livestream.conf import get_settings
from livestream.pushes import channels as push

logger = logging.getLogger(__name__)

# Close codes (autobahn lets an application close only with 1000 or 3000-4999;
# 1012 is sent on the protocol directly by dashboard/daphne/shutdown.py):
FRAME_TOO_BIG = 4009  # a frame over MAX_FRAME_BYTES (1009 is not allowed to apps)
DEACTIVATED = 4003  # the account was deactivated: presence.js shows "signed out", no retry
TOO_MANY_SOCKETS = 4029  # over MAX_SOCKETS_PER_USER: "too many open tabs", retried after 30-60 s
TOO_SLOW = 4008  # over EVENT_SEND_BUFFER unsent: the page reconnects (and gets the sticky state)
SERVICE_RESTART = 1012  # daphne stopping (deploy): reconnect soon, elsewhere

# A connect must finish (subscribe + track) within this, well before daphne's
# handshake timeout (5 s) and application_close_timeout (10 s); else it is refused.
CONNECT_BUDGET = 4.0
# disconnect() waits this long at most for its untrack; the tracker finishes it anyway.
UNTRACK_WAIT = 1.0

# Hub message type -> handler. Nothing else from Redis reaches a socket.
HUB_HANDLERS = {
    "manager": "hub_manager",
    "sessions": "hub_sessions",
    "session.ended": "hub_session_ended",
    "user.deactivated": "hub_user_deactivated",
    "user.reauth": "hub_user_reauth",
    "component.event": "hub_component_event",
    "component.reply": "hub_component_reply",
}
# Pushes held for a socket between its track and its accept, at most (more in those
# milliseconds is a burst: its sticky state and the next status push are what the tab needs).
EARLY_EVENTS = 100


class PresenceConsumer(AsyncWebsocketConsumer):
    user_id: str | None = None
    meta: dict[str, Any] | None = None
    ref: str | None = None  # set once a track was asked for: end_for_good untracks it
    channels: tuple[str, ...] = ()
    live = False
    closing = False
    handed_off = False  # SIGTERM: dashboard/daphne/shutdown.py untracked it with the hand-off delay
    commands: SocketCommands | None = None
    too_slow = False  # over EVENT_SEND_BUFFER: being closed, no more events
    # Pushes that arrived before the accept, sent right after it (None once accepted: sent at
    # once): (True, a component event frame) or (False, a status push's raw text). The track
    # tells the worker of the join, so its answer (a "sessions" count, sent on a change only)
    # can come back before the accept; daphne drops a send to a socket not yet accepted.
    early_events: list[tuple[bool, str]] | None = None
    # Where pushes are sent once accepted: daphne's own send when under daphne. The session
    # and admission wrappers around ``base_send`` act only on the handshake's messages, and a
    # live tab gets a push a second: skipping them is a measurable share of daphne's CPU.
    push_send: Any = None
    session_key: str | None = None  # the session the socket was opened with (the sweep checks it)

    # -- the ASGI loop -----------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self.tasks: set[asyncio.Task[None]] = set()
        handlers = {
            "websocket.connect": self.websocket_connect,
            "websocket.receive": self.websocket_receive,
            "websocket.disconnect": self.websocket_disconnect,
        }
        try:
            while True:
                message = await receive()
                handler = handlers.get(message.get("type"))
                if handler is None:
                    logger.warning(
                        "[PresenceConsumer] dropped an ASGI message of type %.100r", message.get("type")
                    )
                    continue
                await handler(message)
        except StopConsumer:
            pass
        finally:
            await self.end_for_good()

    async def end_for_good(self) -> None:
        """However the consumer ended (disconnect, a handler raised, daphne cancelled
        it), leave the hub and untrack the connection once. Never blocks long."""
        shutdown.forget(self)
        if self.session_key is not None:
            revocation.sweeper().discard(self.session_key, self)
        if self.channels:
            get_hub(HUB_HANDLERS).leave(self, self.channels)
            self.channels = ()
        for task in self.tasks:
            task.cancel()
        if self.commands is not None:
            self.commands.close()
        future = self._untrack()
        if future is not None:
            with _quiet():  # the tracker retries it until it succeeds
                await asyncio.wait_for(asyncio.shield(future), UNTRACK_WAIT)

    def _untrack(self, cleanup_delay: float | None = None) -> asyncio.Future[Any] | None:
        """Queue this connection's untrack (once); forgets it for heartbeats first."""
        if self.handed_off:  # dashboard/daphne/shutdown.py took the ref and untracks it
            return None
        ref, self.ref = self.ref, None
        if ref is None or self.user_id is None:
            return None
        tracker = get_tracker()
        if cleanup_delay is None and tracker.stopping:
            cleanup_delay = shutdown.handoff_delay()
        return tracker.untrack(self.user_id, ref, cleanup_delay)

    # -- connect -----------------------------------------------------------

    async def connect(self) -> None:
        reason = handshake_rejection(self.scope)
        if reason is not None:
            logger.warning("[PresenceConsumer] rejected handshake: %s", reason)
            await self.close()
            return
        tracker = get_tracker()
        if tracker.stopping:
            refuse_log("stopping", "this daphne is stopping")
            await self.close()
            return
        client = self.scope.get("client") or ("?", 0)
        ip = str(client[0])
        if not handshake_limiter().take(ip):
            refuse_log("rate:" + ip, f"over HANDSHAKE_RATE from {ip!r}")
            await self.close()
            return
        conf = get_settings()
        user = self.scope["user"]
        self.user_id = str(user.pk)
        self.live = wants_pushes(self.scope)
        session_key = getattr(self.scope.get("session"), "session_key", None)
        channels = [control_channel(self.user_id)]
        if session_key:
            channels.append(push.session_channel(session_key))
        if self.live:
            channels.append(push.user_channel(self.user_id))
        self.channels = tuple(channels)
        self.meta = {"email": user.email, "joined_at": int(time.time()), "ref": uuid.uuid4().hex}
        self.early_events = []
        try:
            async with asyncio.timeout(CONNECT_BUDGET):
                # Subscribed before tracked: the worker's first push after the join reaches us.
                await get_hub(HUB_HANDLERS).join(self, self.channels)
                self.ref = self.meta["ref"]
                change = await tracker.track(self.user_id, self.meta)
        except Exception as exc:  # Redis down or too slow: refuse; the page backs off and retries
            refuse_log("redis", f"presence not tracked for user {self.user_id}: {exc!r}")
            await self.close()
            return
        if change is not None and change.sessions > conf.MAX_SOCKETS_PER_USER:
            future = self._untrack()
            refuse_log(
                "cap:" + self.user_id,
                f"user {self.user_id} has {change.sessions - 1} sockets open (MAX_SOCKETS_PER_USER "
                f"{conf.MAX_SOCKETS_PER_USER}); closing with {TOO_MANY_SOCKETS}",
            )
            if future is not None:
                with _quiet():
                    await asyncio.wait_for(asyncio.shield(future), UNTRACK_WAIT)
            self.closing = True
            await self.accept()
            await self.close(code=TOO_MANY_SOCKETS)
            return
        if tracker.stopping:  # SIGTERM arrived while we were tracking
            self._untrack()
            await self.close()
            return
        await self.accept()
        self.push_send = daphne_send(self.base_send) or self.base_send
        small_receive_buffer(self._protocol())
        tracker.watch(self.user_id, self.meta)
        self.frames = TokenBucket(conf.FRAME_RATE, conf.FRAME_BURST)
        self.commands = SocketCommands(self.user_id, self._forward)
        shutdown.register(self)
        if session_key:
            self.session_key = session_key
            revocation.sweeper().add(session_key, self)
        # The component state first (read by the track), then what arrived since: in order.
        early, self.early_events = self.early_events or [], None
        for frame in change.sticky if change is not None else ():
            await self._push_event(frame)
        for is_event, text in early:
            await (self._push_event(text) if is_event else self._forward(text))

    # -- client frames -----------------------------------------------------

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        frames: TokenBucket | None = getattr(self, "frames", None)
        if frames is not None and not frames.take():
            self._too_fast()
            if self.dropped_frames % 64 == 0:
                await asyncio.sleep(0)  # daphne queued a whole read of them: let other sockets run
            return
        text = message.get("text")
        data = message.get("bytes")
        size = len(text.encode()) if text is not None else len(data or b"")
        if size > get_settings().MAX_FRAME_BYTES:
            logger.warning("[PresenceConsumer] user %s sent a %d-byte frame; closing", self.user_id, size)
            await self.close(code=FRAME_TOO_BIG)
            return
        if text is None:
            logger.info("[PresenceConsumer] ignored a binary frame from user %s", self.user_id)
            return
        try:
            frame = json.loads(text)
        except ValueError:
            logger.info("[PresenceConsumer] ignored a non-JSON frame from user %s", self.user_id)
            return
        except RecursionError:  # "[[[[..." nested too deep: answer its id if it has one
            if self.commands is None or not await self.commands.unparsable(text):
                logger.info("[PresenceConsumer] ignored a non-JSON frame from user %s", self.user_id)
            return
        if not isinstance(frame, dict):
            return
        if frame.get("type") == "ping":
            await self.send(text_data='{"type": "pong"}')
        elif frame.get("type") == "command" and self.commands is not None:
            await self.commands.receive(frame, size)

    def _too_fast(self) -> None:
        """Over FRAME_RATE: drop, count, log once a minute, and stop reading this socket
        for a moment (backpressure: a flooding client cannot make daphne parse
        frames faster than it drops them)."""
        self.dropped_frames = getattr(self, "dropped_frames", 0) + 1
        now = time.monotonic()
        if now - getattr(self, "dropped_logged", -1e9) >= 60:
            self.dropped_logged = now
            logger.warning(
                "[PresenceConsumer] user %s sends frames faster than %s/s: %d dropped on this socket so far",
                self.user_id,
                get_settings().FRAME_RATE,
                self.dropped_frames,
            )
        if not getattr(self, "paused", False):
            # Not read for a while (0.25 s, doubling to 4 s while it keeps flooding):
            # TCP then blocks the client, and each read is at most RECEIVE_BUFFER.
            pause_for = min(getattr(self, "pause_for", 0.125) * 2, 4.0)
            if pause_reading(self._protocol(), pause_for, self._resumed):
                self.paused, self.pause_for = True, pause_for

    def _resumed(self) -> None:
        self.paused = False

    # -- disconnect --------------------------------------------------------

    async def disconnect(self, code: int) -> None:
        future = self._untrack()
        if self.channels:
            get_hub(HUB_HANDLERS).leave(self, self.channels)
            self.channels = ()
        if future is not None:
            with _quiet():
                await asyncio.wait_for(asyncio.shield(future), UNTRACK_WAIT)

    # -- hub messages (see HUB_HANDLERS; awaited by the hub: never block) -----

    async def hub_manager(self, event: dict[str, Any], raw: str) -> None:
        if self.live and self._is_mine(event) and not self._held(False, raw):
            await self._forward(raw)

    async def hub_sessions(self, event: dict[str, Any], raw: str) -> None:
        sessions = event.get("sessions")
        if self.live and self._is_mine(event) and isinstance(sessions, int) and not self._held(False, raw):
            await self._forward(raw)

    def _held(self, is_event: bool, text: str) -> bool:
        """Tracked, not accepted yet: hold it (up to EARLY_EVENTS) for right after the accept."""
        if self.early_events is None:
            return False
        if len(self.early_events) < EARLY_EVENTS:
            self.early_events.append((is_event, text))
        return True

    async def hub_component_event(self, event: dict[str, Any], raw: str) -> None:
        frame = event.get("frame")
        if not isinstance(frame, str) or not self._is_mine(event):
            return
        if not self._held(True, frame):
            await self._push_event(frame)

    async def hub_component_reply(self, event: dict[str, Any], raw: str) -> None:
        # Every socket of the user hears every reply; only the sender's token matches.
        if self.commands is not None and event.get("to") == self.commands.token and self._is_mine(event):
            self.commands.arrived(event)

    async def _push_event(self, frame: str) -> None:
        """Forward an event unless this socket is too far behind (then close it: see TOO_SLOW)."""
        if self.closing or self.too_slow:
            return
        queued = unsent_bytes(self._protocol())
        if queued > get_settings().EVENT_SEND_BUFFER:
            self.too_slow = True  # one line and one close, however many events follow
            logger.warning(
                "[PresenceConsumer] a socket of user %s has %d bytes unsent; closing it (%d)",
                self.user_id,
                queued,
                TOO_SLOW,
            )
            self._spawn(self.end_and_close(TOO_SLOW, "too slow to take its events"))
            return
        await self._forward(frame)

    async def hub_session_ended(self, event: dict[str, Any], raw: str) -> None:
        self._spawn(self.end_and_close(SESSION_ENDED, f"session {str(event.get('reason', 'ended'))[:100]!r}"))

    async def hub_user_reauth(self, event: dict[str, Any], raw: str) -> None:
        """The user's password changed: is this socket's session still theirs?"""
        if self._is_mine(event) and self.session_key is not None:
            self._spawn(self._recheck_session())

    async def _recheck_session(self) -> None:
        if self.session_key is None or self.user_id is None:
            return
        try:
            valid = await revocation.still_valid(self.session_key, self.user_id)
        except Exception as exc:  # the database away: the sweep or the next check decides
            logger.warning("[PresenceConsumer] session of user %s not re-checked: %r", self.user_id, exc)
            return
        if not valid:
            await self.end_and_close(SESSION_ENDED, "session 'password changed'")

    def session_gone(self, why: str) -> None:
        """The sweep found this socket's session expired or deleted."""
        self._spawn(self.end_and_close(SESSION_ENDED, f"session {why!r}"))

    async def hub_user_deactivated(self, event: dict[str, Any], raw: str) -> None:
        if self._is_mine(event):
            self._spawn(self.end_and_close(DEACTIVATED, "account deactivated"))

    async def end_and_close(self, code: int, why: str) -> None:
        """Leave presence at once (not at disconnect), then close with ``code``."""
        if self.closing:
            return
        self.closing = True
        logger.info("[PresenceConsumer] closing a socket of user %s: %s", self.user_id, why)
        future = self._untrack()
        if future is not None:
            with _quiet():
                await asyncio.wait_for(asyncio.shield(future), 5.0)
        await self.close(code=code)

    async def close_for_restart(self, spread: float = 2.0) -> None:
        """Close with 1012 (service restart) and "spread=<s>": reconnect within s seconds.
        Sent on daphne's protocol: daphne's API allows only 1000 and 3000-4999. The
        caller ends the connection if the tab does not answer (adapter.end_closing)."""
        self.closing = True
        if not close_for_restart(self._protocol(), SERVICE_RESTART, f"spread={spread:.1f}".encode()):
            # Not under daphne (tests' communicator), or the adapter switched it off.
            await self.close(code=4000 + SERVICE_RESTART % 1000)

    def _protocol(self) -> Any:
        return daphne_protocol(getattr(self, "base_send", None))

    def _is_mine(self, event: dict[str, Any]) -> bool:
        """Defence in depth: a message for another user is dropped, never forwarded."""
        if event.get("user_id") == self.user_id:
            return True
        logger.error(
            "[PresenceConsumer] dropped %.100r for user %.100r on a socket of user %s",
            event.get("type"),
            event.get("user_id"),
            self.user_id,
        )
        return False

    async def _forward(self, raw: str) -> None:
        if self.closing:
            return
        try:
            await (self.push_send or self.base_send)({"type": "websocket.send", "text": raw})
        except Exception as exc:
            # The client is closing (daphne raises on a send in that state); its disconnect follows.
            logger.debug("[PresenceConsumer] push to a closing socket of %s dropped: %r", self.user_id, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class _quiet:
    """``with _quiet(): await ...``: a wait that may time out or fail without consequence."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, Exception)
