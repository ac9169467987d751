"""StreamStateServer: the user's stream state, changed by commands from their pages.

  offline --go_live--> starting --(STREAM_START_DELAY)--> live
  live or starting --end_stream--> ending --(STREAM_END_DELAY)--> offline

The state lives in Redis (``keys.stream_state(user)``, a HASH: ``state``, ``since``
and a stamp per state reached: ``started_at``, ``live_at``, ``ending_at``,
``ended_at``, unix seconds), changed only by a compare-and-set script, so the
manager that runs the user next (after a failover, a deploy, a tab closed and
opened again) resumes it instead of losing a live stream:

* ``live`` and ``offline`` are kept as they are;
* a ``starting`` or ``ending`` left by an owner that died is completed by the new
  owner when its delay is over, counted from ``since`` (at once if it is over):
  a start always ends live, an end always ends offline, never half-way.

The state at start (``offline`` for a user who never went live) and every change are
emitted as the sticky ``state`` event, so every open tab shows it and a tab that
connects later gets it at once:

  {"type": "event", "component": "StreamStateServer", "event": "state",
   "data": {"state": "live", "since": 1764480000.5, "started_at": ..., "live_at": ...,
            "ending_at": null, "ended_at": null}}

Commands: ``go_live`` (from offline) and ``end_stream`` (from starting or live);
any other transition is refused with a CommandError naming the current state. Both
reply with the new state's data.

**Going live for real (issue 18).** A sibling component of the same manager that takes
part in the stream (the CloudflareManager: the ingest and the outputs) registers itself
for its user with ``register_participant`` while it runs; nothing else crosses between
components, and none of it leaves the process:

* ``go_live`` first asks ``participant.can_go_live()``: a reason to refuse (no input
  connected, no output enabled, streaming unavailable) becomes the CommandError. With
  no participant (the component disabled for the user), or BROADCAST_REQUIRED off,
  going live only changes the state, as before.
* every change reached is told to ``participant.stream_state_changed(state)`` (after it
  is stored and emitted), so "live" starts the outputs and "ending" stops them.
* ``end_stream(user_id, reason)`` ends the stream from the component side (OBS gone for
  longer than DISCONNECT_TIMEOUT): the state event then carries ``ended_reason``
  (None otherwise; cleared by the next go_live).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Protocol, TypeVar

from redis.exceptions import RedisError

from livestream import keys
from livestream.components.base import CommandError, Component
from livestream.components.emitter import sticky_data, sticky_field
from livestream.conf import get_settings
from livestream.ownership import fencing
from livestream.redis import get_redis, run_script

logger = logging.getLogger("livestream.stream_state")
T = TypeVar("T")

OFFLINE, STARTING, LIVE, ENDING = "offline", "starting", "live", "ending"
STAMPS = {STARTING: "started_at", LIVE: "live_at", ENDING: "ending_at", OFFLINE: "ended_at"}

# KEYS: stream hash, token, refused counter. ARGV: to, now, stamp field, reason ('' keeps it,
# '-' clears it), fencing token, allowed from-states... Returns {1, fields...} when it moved,
# {0, fields...} (unchanged) when the state was not allowed, {-1, fields...} (unchanged) when
# the token is stale.
_TRANSITION = fencing.script(
    "stream_state.transition",
    """
if not fence_ok(KEYS[2], ARGV[5], KEYS[3]) then return {-1, redis.call('HGETALL', KEYS[1])} end
local cur = redis.call('HGET', KEYS[1], 'state') or 'offline'
for i = 6, #ARGV do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'since', ARGV[2], ARGV[3], ARGV[2])
    if ARGV[4] == '-' then redis.call('HDEL', KEYS[1], 'reason')
    elseif ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[4]) end
    return {1, redis.call('HGETALL', KEYS[1])}
  end
end
return {0, redis.call('HGETALL', KEYS[1])}
""",
)


class Participant(Protocol):
    """A sibling component taking part in the user's stream (see the module docstring)."""

    async def can_go_live(self) -> str | None: ...

    def stream_state_changed(self, state: str) -> None: ...


# This process' participants and running servers, by user (one manager per user per process).
_participants: dict[str, Participant] = {}
_servers: dict[str, StreamStateServer] = {}


def register_participant(user_id: str, participant: Participant) -> None:
    _participants[user_id] = participant


def unregister_participant(user_id: str, participant: Participant) -> None:
    if _participants.get(user_id) is participant:
        del _participants[user_id]


async def end_stream(user_id: str, reason: str) -> bool:
    """End the user's stream (starting or live -> ending) with ``reason``; True if it moved.
    Through the user's running StreamStateServer in this process, or, if none runs here,
    with the same compare-and-set (its next owner completes the end)."""
    server = _servers.get(user_id) or StreamStateServer(user_id)
    moved, _ = await server._move(ENDING, STARTING, LIVE, reason=reason)
    if moved:
        server._changed.set()
    return bool(moved)


def snapshot(fields: dict[str, str]) -> dict[str, Any]:
    """The ``state`` event's data from the stored HASH (stamps as floats or None)."""
    data: dict[str, Any] = {"state": fields.get("state", OFFLINE)}
    for name in ("since", *STAMPS.values()):
        value = fields.get(name)
        data[name] = float(value) if value else None
    data["ended_reason"] = fields.get("reason") or None
    return data


class StreamStateServer(Component):
    """Serves one user's stream state to their pages (see the module docstring)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.state = OFFLINE
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()  # a change and its event go out together, in order

    @property
    def key(self) -> str:
        return keys.stream_state(self.user_id)

    async def _load(self) -> dict[str, str]:
        """The stored state HASH (empty: never went live)."""
        fields = await get_redis().hgetall(self.key)
        return {str(k): str(v) for k, v in fields.items()}

    async def _load_and_kept(self) -> tuple[dict[str, str], dict[str, Any] | None]:
        """The state HASH and the ``state`` event tabs are sent at connect, in one round trip."""
        async with get_redis().pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key)
            pipe.hget(keys.sticky(self.user_id), sticky_field("StreamStateServer", "state"))
            fields, frame = await pipe.execute()
        return {str(k): str(v) for k, v in fields.items()}, sticky_data(frame)

    async def run(self) -> None:
        _servers[self.user_id] = self
        try:
            await self._serve()
        finally:
            if _servers.get(self.user_id) is self:
                del _servers[self.user_id]

    async def _serve(self) -> None:
        fields, kept = await self._retrying(self._load_and_kept)
        self.state = fields.get("state", OFFLINE)
        if fields and self.state != OFFLINE:
            logger.info("[UserStreamManager:%s] StreamStateServer resumed %s", self.user_id, self.state)
        # The state at start, sticky: open tabs show it and each tab that connects later gets
        # it right after it connects, also for a user who never went live ("offline", no stamps).
        # Kept already (the last run sent it, nothing changed since): not sent again, so a
        # worker starting 10,000 managers does not publish 10,000 events nobody needs.
        if kept != snapshot(fields):
            await self._retrying(partial(self.emit, "state", snapshot(fields), sticky=True))
        # The first pass uses the read above (a start is one HGETALL, not two). It skips the
        # clear() too: a command that changed the state since that read has set _changed,
        # and the wait below returns at once to read again.
        first = True
        while True:
            if not first:
                self._changed.clear()
                fields = await self._retrying(self._load)
            first = False
            state = fields.get("state", OFFLINE)
            if state in (STARTING, ENDING):
                conf = get_settings()
                delay = conf.STREAM_START_DELAY if state == STARTING else conf.STREAM_END_DELAY
                due = float(fields.get("since") or 0) + delay - time.time()
                try:  # an end_stream during "starting" wakes us early
                    await asyncio.wait_for(self._changed.wait(), max(0.0, due))
                    continue
                except TimeoutError:
                    pass
                moved, _ = await self._retrying(
                    partial(self._move, LIVE if state == STARTING else OFFLINE, state)
                )
                if moved is None:  # our lease token is stale: this manager is about to be stopped
                    await asyncio.sleep(get_settings().RECONCILE_INTERVAL)
            else:
                await self._changed.wait()

    async def _retrying(self, step: Callable[[], Awaitable[T]]) -> T:
        """``step()``, retried while Redis is unreachable (a restart, a failover): crashing
        instead would mark the component failed after three quick restarts."""
        delay, failing = 0.25, False
        while True:
            try:
                return await step()
            except (RedisError, OSError) as exc:
                if not failing:
                    logger.warning(
                        "[UserStreamManager:%s] StreamStateServer cannot reach Redis (%r); retrying",
                        self.user_id,
                        exc,
                    )
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def on_command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if args:
            raise CommandError(f"{name} takes no arguments")
        if name == "go_live":
            participant = _participants.get(self.user_id)
            if participant is not None and get_settings().BROADCAST_REQUIRED and self.state == OFFLINE:
                refused = await participant.can_go_live()
                if refused:
                    raise CommandError(refused)
            return await self._command(STARTING, OFFLINE)
        if name == "end_stream":
            return await self._command(ENDING, STARTING, LIVE)
        raise CommandError(f"unknown command {name!r}")

    async def _command(self, to: str, *allowed: str) -> dict[str, Any]:
        moved, data = await self._move(to, *allowed, reason="-" if to == STARTING else "")
        if moved is None:
            raise CommandError("this stream's manager is moving to another worker; try again")
        if not moved:
            verb = "go live" if to == STARTING else "end the stream"
            raise CommandError(f"cannot {verb} while the stream is {data['state']}")
        self._changed.set()
        return data

    async def _move(self, to: str, *allowed: str, reason: str = "") -> tuple[bool | None, dict[str, Any]]:
        """Compare-and-set the state (fenced: refused for a stale lease token); emit the new
        one; tell the participant. ``(moved, state data)``, moved None when refused."""
        async with self._lock:
            fence = self.fence
            result = await run_script(
                get_redis(),
                _TRANSITION,
                [self.key, *fence.keys()],
                to,
                f"{time.time():.3f}",
                STAMPS[to],
                reason,
                fence.arg(),
                *allowed,
            )
            flat = [str(x) for x in result[1]]
            data = snapshot(dict(zip(flat[::2], flat[1::2], strict=True)))
            self.state = data["state"]
            outcome = int(result[0])
            if outcome < 0:
                fence.refused(f"stream {to}")
                return None, data
            if outcome:
                logger.info("[UserStreamManager:%s] stream %s", self.user_id, to)
                await self.emit("state", data, sticky=True)
                participant = _participants.get(self.user_id)
                if participant is not None:
                    participant.stream_state_changed(to)
            return bool(outcome), data

    def status(self) -> dict[str, Any]:
        return {"stream": self.state}
