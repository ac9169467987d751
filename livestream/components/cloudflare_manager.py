"""CloudflareManager: the user's live streaming: their ingest (where OBS publishes) and the
outputs the stream is sent on to (issue 18; docs/broadcast.md).

The name is the seed's; the work is done by the backend chosen by
LIVESTREAM["BROADCAST_BACKEND"] (broadcast/backends/: self-hosted nginx-rtmp + ffmpeg
relays, or Cloudflare Stream). This component owns the per-user logic both share:

* events to every tab of the user (sticky, so a tab opened later gets them at once):
    "ingest"  {"available", "reason", "server_url", "key_masked", "obs", "backend"}
    "input"   {"state": "connected" | "disconnected", "since"}
    "outputs" {"outputs": [{"id", "name", "enabled", "state", "error", "host"}]} (never a key)
* commands: add_output {"name", "url", "key"} -> {"id"}; set_output {"id", "enabled"};
  remove_output {"id"}; new_key -> {"key"}; show_key -> {"key"} (replies go to that tab only);
  create_key -> {"key_masked"}: the user's ingest, made on demand (the Stream page sends it
  when the ``ingest`` event has no key yet).
* a start is cheap (10,000 of them share a worker): one Redis round trip reads the input,
  the stream state and this component's sticky events; an event is sent again only if it
  changed, the database is read only when no event is kept yet, and the outputs are read
  when something needs them (a command, going live, a stream still running), not before.
* the input state: woken by broadcast.inputs.set_input (broadcast/listener.py), and, while
  the input is connected or the stream is not offline, polling the backend every
  INPUT_POLL_INTERVAL in case a callback was lost (two polls must agree before the stored
  state is corrected, so a poll racing a callback cannot flip it). An idle manager never
  wakes by itself; go_live asks the backend once before refusing for want of an input.
* going live: StreamStateServer asks ``can_go_live`` (input connected, an output enabled)
  and tells ``stream_state_changed``; while the stream is starting or live one
  ``backend.run_output`` task runs per enabled output; "ending" cancels them all (each
  backend stops its output before returning; waited up to END_WAIT).
* OBS gone: the stream stays live for DISCONNECT_TIMEOUT (counted from the input's
  ``since`` in Redis, so a new owner after a failover keeps counting), outputs resume
  when it is back; past it the stream is ended with the reason shown.
* a stream counts as presence (issue 18 item 6): while the input is connected or the stream
  is not offline, the stream's presence connection is heartbeated (broadcast/inputs.py);
  when both are over it is untracked, so the manager stops CLEANUP_TIMEOUT after the last
  tab *and* the stream are gone.

Log lines (the worker's): ``[UserStreamManager:<id>] input connected``, ``... input
disconnected``, ``... output <id> live``, ``... output <id> failed: <reason>``,
``... stream ended: <reason>``. Never a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from redis.exceptions import RedisError

from broadcast import inputs
from broadcast.backends import get_backend
from broadcast.backends.base import FAILED, LIVE, OFF, BackendError, Ingest, OutputSpec
from broadcast.db import run_db
from broadcast.listener import listener as input_listener
from broadcast.outputs import outputs_for
from livestream import keys, logformats
from livestream.components import stream_state
from livestream.components.base import CommandError, Component
from livestream.components.emitter import sticky_data, sticky_field
from livestream.conf import get_settings
from livestream.redis import get_redis
from livestream.tasks import cancel_and_wait, retry_delay, stop_requested
from streampai import secrets

logger = logging.getLogger("livestream.cloudflare_manager")

# How long "ending" waits for the outputs to stop (the "within 2 s").
END_WAIT = 1.8
MAX_OUTPUTS = 10
RUNNING_STATES = (stream_state.STARTING, stream_state.LIVE)


@dataclass
class OutputView:
    spec: OutputSpec
    state: str = OFF
    error: str | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.spec.id,
            "name": self.spec.name,
            "enabled": self.spec.enabled,
            "state": self.state,
            "error": self.error,
            "host": urlsplit(self.spec.url).hostname or "",
        }


def _text(args: dict[str, Any], name: str, limit: int, *, required: bool = True) -> str:
    value = args.get(name, "")
    if not isinstance(value, str):
        raise CommandError(f"{name} must be a string")
    value = value.strip()
    if required and not value:
        raise CommandError(f"{name} is required")
    if len(value) > limit:
        raise CommandError(f"{name} is too long (at most {limit} characters)")
    return value


@dataclass(frozen=True)
class Snapshot:
    """What a manager's start reads, in one round trip."""

    input: inputs.InputState
    stream: str
    kept: dict[str, dict[str, Any] | None]  # this component's sticky events' data, by event


STICKY_EVENTS = ("ingest", "input", "outputs")


async def read_snapshot(user_id: str) -> Snapshot:
    fields = [sticky_field("CloudflareManager", event) for event in STICKY_EVENTS]
    async with get_redis().pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.broadcast_input(user_id))
        pipe.hget(keys.stream_state(user_id), "state")
        pipe.hmget(keys.sticky(user_id), fields)
        found, state, frames = await pipe.execute()
    return Snapshot(
        inputs.parse_input(found),
        str(state) if state else stream_state.OFFLINE,
        {event: sticky_data(frame) for event, frame in zip(STICKY_EVENTS, frames, strict=True)},
    )


def validate_output(args: dict[str, Any]) -> tuple[str, str, str]:
    """(name, url, key) of an add_output, or CommandError saying what is wrong."""
    unknown = set(args) - {"name", "url", "key"}
    if unknown:
        raise CommandError(f"unknown field {sorted(unknown)[0]!r}")
    name = _text(args, "name", 100)
    url = _text(args, "url", 1000)
    key = _text(args, "key", 500, required=False)
    parts = urlsplit(url)
    if parts.scheme not in ("rtmp", "rtmps") or not parts.hostname or any(c.isspace() for c in url):
        raise CommandError("url must be an rtmp:// or rtmps:// URL, e.g. rtmp://live.twitch.tv/app")
    if any(c.isspace() for c in key):
        raise CommandError("key must not contain spaces")
    return name, url, key


class CloudflareManager(Component):
    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.backend = get_backend()
        self.input_connected = False
        self.input_since: float | None = None
        self.stream = stream_state.OFFLINE
        self.outputs: dict[str, OutputView] = {}
        self.relays: dict[str, asyncio.Task[None]] = {}
        self._relay_specs: dict[str, OutputSpec] = {}
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()  # the outputs event is due
        self._holding = False
        self._held_at = 0.0
        self._poll_disagreed = False
        self._outputs_loaded = False  # read from the database in this run
        self._outputs_failures = 0
        self._outputs_retry_at: float | None = None  # the outputs could not be read: try again then
        self._ingest_failures = 0
        self._ingest_retry_at: float | None = None  # the ingest could not be set up: try again then

    # -- lifecycle ------------------------------------------------------------

    async def run(self) -> None:
        wakeups = input_listener()
        wake = wakeups.register(self.user_id)
        stream_state.register_participant(self.user_id, self)
        emitter = asyncio.create_task(self._emit_outputs_loop(), name=f"outputs:{self.user_id}")
        try:
            await self._serve(wake)
        finally:
            stream_state.unregister_participant(self.user_id, self)
            wakeups.unregister(self.user_id, wake)
            await self._stop_relays(set(self.relays))
            emitter.cancel()

    async def _start(self) -> None:
        snapshot = await read_snapshot(self.user_id)
        self.stream = snapshot.stream
        await self._restore_ingest(snapshot.kept["ingest"])
        kept_outputs = snapshot.kept["outputs"]
        if kept_outputs is None or self.stream in RUNNING_STATES or not _all_off(kept_outputs):
            await self._reload_outputs()  # what the tabs are shown is not what is true now
        if self._apply_input(snapshot.input):
            logger.info(logformats.INPUT_CHANGED, self.user_id, inputs.CONNECTED)
        if snapshot.kept["input"] != self._input_data():
            await self._emit_input()
        if snapshot.input.ref is None:
            self._held_at = -1.0  # no stream presence left behind to release

    async def _serve(self, wake: asyncio.Event) -> None:
        """Start, then follow the input, the stream state and the outputs until cancelled.
        Redis trouble (a restart, a failover) is waited out with backoff, one log line per
        outage: crashing would mark the component failed after three quick restarts, and the
        relays (tasks of their own) keep going meanwhile."""
        failures = 0
        while True:
            try:
                await self._start()
                break
            except (RedisError, OSError) as exc:
                failures = await self._redis_trouble(exc, failures)
        failures = 0
        next_poll = time.monotonic() + get_settings().INPUT_POLL_INTERVAL
        while True:
            try:
                next_poll = await self._step(wake, next_poll)
                failures = 0
            except (RedisError, OSError) as exc:
                failures = await self._redis_trouble(exc, failures)

    async def _redis_trouble(self, exc: Exception, failures: int) -> int:
        if stop_requested():
            raise asyncio.CancelledError from exc
        if failures == 0:
            logger.warning(
                "[UserStreamManager:%s] CloudflareManager: Redis error (%r); retrying", self.user_id, exc
            )
        failures += 1
        await asyncio.sleep(retry_delay(failures, 0.25, 2.0))
        return failures

    def _active(self) -> bool:
        """Is there a stream to watch (a lost callback would matter)?"""
        return self.input_connected or self.stream != stream_state.OFFLINE

    async def _step(self, wake: asyncio.Event, next_poll: float) -> float:
        """One round: apply the state, wait for a change (or a deadline), read it. Only an
        active stream, a presence hold or a retry sets a deadline: an idle manager sleeps
        until woken."""
        conf = get_settings()
        if self._outputs_retry_at is not None and time.monotonic() >= self._outputs_retry_at:
            await self._reload_outputs()
        if self._ingest_retry_at is not None and time.monotonic() >= self._ingest_retry_at:
            await self._emit_ingest()
        await self._apply()
        now = time.monotonic()
        if not self._active():
            next_poll = now + conf.INPUT_POLL_INTERVAL  # the first poll one interval after it starts
        timeout = self._wait_for(next_poll, now)
        # A cancel that a client library reported as an error we caught (redis-py can)
        # would otherwise be lost until the wait's timeout.
        if stop_requested():
            raise asyncio.CancelledError
        with contextlib.suppress(TimeoutError):
            # unlike 3.11's wait_for, asyncio.timeout never loses a cancel
            async with asyncio.timeout(None if timeout == float("inf") else max(0.05, timeout)):
                await self._wait_any(wake)
        if wake.is_set():
            wake.clear()
            await self._read_input()
        if self._active() and time.monotonic() >= next_poll:
            next_poll = time.monotonic() + conf.INPUT_POLL_INTERVAL
            await self._poll()
        return next_poll

    def _wait_for(self, next_poll: float, now: float) -> float:
        """Seconds until something is due (inf: nothing; only a wake-up or a command moves it)."""
        deadlines = [t for t in (self._outputs_retry_at, self._ingest_retry_at) if t is not None]
        if self._active():
            deadlines.append(next_poll)
        if self._holding:
            deadlines.append(self._held_at + get_settings().HEARTBEAT_INTERVAL)
        return min(min((t - now for t in deadlines), default=float("inf")), self._until_timeout())

    async def _wait_any(self, wake: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        self._wake.clear()

    # -- the ingest -------------------------------------------------------------

    def _ingest_base(self) -> dict[str, Any]:
        reason = self.backend.unavailable()
        return {
            "available": reason is None,
            "reason": reason,
            "server_url": None,
            "key_masked": None,
            "backend": self.backend.name,
            **self.backend.ingest_info(),
        }

    async def _restore_ingest(self, kept: dict[str, Any] | None) -> None:
        """At start: the kept ``ingest`` event stands if nothing but the key and URL differ
        (those change only through this component's commands, which send the event again);
        otherwise read the stored ingest and send it."""
        base = self._ingest_base()
        same = ("server_url", "key_masked")
        if kept is not None and {k: v for k, v in kept.items() if k not in same} == {
            k: v for k, v in base.items() if k not in same
        }:
            return
        await self._emit_ingest()

    async def _emit_ingest(self, ingest: Ingest | None = None) -> None:
        """The sticky ``ingest`` event: where OBS publishes (the key masked), or why it cannot.
        Without ``ingest``, the stored one (none yet: no key, until create_key)."""
        data = self._ingest_base()
        if data["available"]:
            try:
                ingest = ingest or await self.backend.stored_ingest(self.user_id)
                if ingest is not None:
                    data.update(server_url=ingest.server_url, key_masked=secrets.mask(ingest.stream_key))
                self._ingest_failures, self._ingest_retry_at = 0, None
            except Exception as exc:
                if stop_requested():
                    raise asyncio.CancelledError from exc
                self._ingest_failures += 1
                if self._ingest_failures == 1:
                    logger.warning(
                        "[UserStreamManager:%s] ingest not ready: %s; retrying",
                        self.user_id,
                        type(exc).__name__,
                    )
                self._ingest_retry_at = time.monotonic() + retry_delay(self._ingest_failures, 1.0, 60.0)
                why = str(exc) if isinstance(exc, BackendError) else "the ingest could not be set up yet"
                data.update(available=False, reason=f"{why}; retrying")
        await self.emit("ingest", data, sticky=True)

    # -- the input ---------------------------------------------------------------

    def _input_data(self) -> dict[str, Any]:
        return {
            "state": inputs.CONNECTED if self.input_connected else inputs.DISCONNECTED,
            "since": self.input_since,
        }

    def _apply_input(self, state: inputs.InputState) -> bool:
        """Take the stored input state; True if connected-ness changed."""
        changed = state.connected != self.input_connected
        self.input_connected, self.input_since = state.connected, state.since
        self.backend.input_state_changed(self.user_id, state.connected)
        return changed

    async def _emit_input(self) -> None:
        await self.emit("input", self._input_data(), sticky=True)

    async def _read_input(self) -> None:
        if self._apply_input(await inputs.get_input(self.user_id)):
            await self._emit_input()
            logger.info(logformats.INPUT_CHANGED, self.user_id, self._input_data()["state"])

    async def _poll(self) -> None:
        """The backend's view of the input; corrects the stored state when two polls in a row
        disagree with it (a lost callback or webhook)."""
        try:
            polled = await self.backend.input_connected(self.user_id)
        except Exception as exc:
            logger.warning("[UserStreamManager:%s] input poll failed: %s", self.user_id, type(exc).__name__)
            return
        if polled == self.input_connected:
            self._poll_disagreed = False
            return
        if not self._poll_disagreed:
            self._poll_disagreed = True
            return
        self._poll_disagreed = False
        if not polled:
            await inputs.forget_publishes(self.user_id)
        await inputs.set_input(self.user_id, polled)  # publishes: the wake-up re-reads it

    # -- the stream ------------------------------------------------------------------

    async def _poll_now(self) -> bool:
        """Ask the backend right away (go_live found no input: a lost callback?); a publisher
        it sees is recorded, and the wake-up that follows tells every tab."""
        try:
            connected = await self.backend.input_connected(self.user_id)
        except Exception as exc:
            logger.warning("[UserStreamManager:%s] input poll failed: %s", self.user_id, type(exc).__name__)
            return False
        if connected:
            await inputs.set_input(self.user_id, True)
        return connected

    async def _stored_stream_state(self) -> str:
        value = await get_redis().hget(keys.stream_state(self.user_id), "state")
        return str(value) if value else stream_state.OFFLINE

    def stream_state_changed(self, state: str) -> None:
        """StreamStateServer reached ``state`` (called in its task, after the emit)."""
        self.stream = state
        self._wake.set()

    async def can_go_live(self) -> str | None:
        reason = self.backend.unavailable()
        if reason:
            return f"streaming is unavailable here: {reason}"
        if not (await inputs.get_input(self.user_id)).connected and not await self._poll_now():
            return "no input connected: start streaming from OBS to your ingest URL and stream key first"
        await self._ensure_outputs()
        if not any(view.spec.enabled for view in self.outputs.values()):
            return "no output enabled: add an output (or enable one) first"
        return None

    def _until_timeout(self) -> float:
        """Seconds until OBS has been gone DISCONNECT_TIMEOUT (inf when that does not apply)."""
        if self.stream not in RUNNING_STATES or self.input_connected:
            return float("inf")
        since = self.input_since or time.time()
        return max(0.0, since + get_settings().DISCONNECT_TIMEOUT - time.time())

    async def _apply(self) -> None:
        """Make the relays, the presence hold and the disconnect timeout match the state."""
        if self.stream in RUNNING_STATES and not self.input_connected and self._until_timeout() <= 0:
            reason = f"input disconnected for more than {get_settings().DISCONNECT_TIMEOUT:g}s"
            if await stream_state.end_stream(self.user_id, reason):
                logger.info(logformats.STREAM_ENDED, self.user_id, reason)
            self.stream = await self._stored_stream_state()
        if self.stream in RUNNING_STATES and not self._outputs_loaded:
            await self._reload_outputs()
        wanted = {
            oid: view.spec
            for oid, view in self.outputs.items()
            if view.spec.enabled and self.stream in RUNNING_STATES
        }
        stale = {oid for oid, spec in self._relay_specs.items() if wanted.get(oid) != spec}
        stale |= {oid for oid, task in self.relays.items() if task.done()}
        if stale:
            await self._stop_relays(stale)
        for oid, spec in wanted.items():
            if oid not in self.relays:
                self._relay_specs[oid] = spec
                self.relays[oid] = asyncio.create_task(self._relay(spec), name=f"relay:{self.user_id}:{oid}")
        await self._presence()

    async def _presence(self) -> None:
        want = self.input_connected or self.stream != stream_state.OFFLINE
        if want and (
            not self._holding or time.monotonic() - self._held_at >= get_settings().HEARTBEAT_INTERVAL
        ):
            await inputs.hold_presence(self.user_id)
            self._holding, self._held_at = True, time.monotonic()
        elif not want and (self._holding or self._held_at == 0.0):
            # Also at start: a hold left by a publish that has ended since (or a dead owner).
            self._held_at = -1.0
            if await inputs.release_presence(self.user_id):
                logger.info("[UserStreamManager:%s] stream presence released", self.user_id)
            self._holding = False

    # -- the outputs --------------------------------------------------------------------

    async def _relay(self, spec: OutputSpec) -> None:
        """The backend's run_output for one output; a crash of it is reported and retried."""
        failures = 0
        while True:
            try:
                await self.backend.run_output(
                    self.user_id, spec, lambda s, e: self._report(spec.id, s, e), self.may_act
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop_requested():  # a cancel a client library reported as an error
                    raise asyncio.CancelledError from exc
                failures += 1
                logger.exception("[UserStreamManager:%s] output %s: backend error", self.user_id, spec.id)
                self._report(spec.id, FAILED, f"internal error ({type(exc).__name__})")
                conf = get_settings()
                await asyncio.sleep(retry_delay(failures, conf.RELAY_BACKOFF, conf.RELAY_BACKOFF_MAX))

    def _report(self, output_id: str, state: str, error: str | None) -> None:
        view = self.outputs.get(output_id)
        if view is None or (view.state, view.error) == (state, error):
            return
        if state == LIVE and view.state != LIVE:
            logger.info(logformats.OUTPUT_LIVE, self.user_id, output_id)
        elif state == FAILED:
            logger.warning(logformats.OUTPUT_FAILED, self.user_id, output_id, error)
        view.state, view.error = state, error
        self._dirty.set()

    async def _stop_relays(self, ids: set[str]) -> None:
        tasks = [self.relays.pop(oid) for oid in ids if oid in self.relays]
        for oid in ids:
            self._relay_specs.pop(oid, None)
        stuck = await cancel_and_wait(tasks, END_WAIT, keep_trying=True)
        if stuck:
            logger.error(
                "[UserStreamManager:%s] %d outputs did not stop in %ss", self.user_id, len(stuck), END_WAIT
            )
        for oid in ids:
            if oid in self.outputs:
                self._report(oid, OFF, None)

    async def _reload_outputs(self) -> None:
        """Read the outputs again; if the database cannot be read, keep the ones known and retry
        with backoff (a crash would mark the component failed after three quick restarts)."""
        try:
            specs = await outputs_for(self.user_id)
        except Exception as exc:
            self._outputs_failures += 1
            delay = retry_delay(self._outputs_failures, 0.5, 30.0)
            if self._outputs_failures == 1:
                logger.warning(
                    "[UserStreamManager:%s] outputs not read (%s); retrying", self.user_id, type(exc).__name__
                )
            self._outputs_retry_at = time.monotonic() + delay
            return
        self._outputs_failures, self._outputs_retry_at = 0, None
        self._outputs_loaded = True
        fresh: dict[str, OutputView] = {}
        for spec in specs:
            old = self.outputs.get(spec.id)
            fresh[spec.id] = OutputView(spec, old.state, old.error) if old is not None else OutputView(spec)
        self.outputs = fresh
        self._dirty.set()
        self._wake.set()

    async def _ensure_outputs(self) -> None:
        if not self._outputs_loaded:
            await self._reload_outputs()

    async def _emit_outputs_loop(self) -> None:
        """One ``outputs`` event per burst of changes (reports come from every relay)."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.emit(
                    "outputs", {"outputs": [v.wire() for v in self.outputs.values()]}, sticky=True
                )
            except Exception as exc:  # Redis trouble: the next change (or a retry) sends it
                logger.warning("[UserStreamManager:%s] outputs event not sent: %r", self.user_id, exc)
                await asyncio.sleep(0.5)
                self._dirty.set()
            await asyncio.sleep(0.05)

    # -- commands ----------------------------------------------------------------------------

    async def on_command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name in ("add_output", "set_output", "remove_output"):
            await self._ensure_outputs()
        if name == "add_output":
            out_name, url, key = validate_output(args)
            output_id = await run_db(lambda: self._add_output(out_name, url, key))
            logger.info("[UserStreamManager:%s] output %s added", self.user_id, output_id)
            await self._reload_outputs()
            return {"id": output_id}
        if name == "set_output":
            enabled = args.get("enabled")
            if not isinstance(enabled, bool):
                raise CommandError("enabled must be true or false")
            output_id = self._output_id(args)
            await run_db(lambda: self._change_output(output_id, enabled))
            await self._reload_outputs()
            return {"id": output_id, "enabled": enabled}
        if name == "remove_output":
            output_id = self._output_id(args)
            await run_db(lambda: self._change_output(output_id, None))
            logger.info("[UserStreamManager:%s] output %s removed", self.user_id, output_id)
            await self._reload_outputs()
            return {"id": output_id}
        if name in ("new_key", "show_key", "create_key"):
            if args:
                raise CommandError(f"{name} takes no arguments")
            reason = self.backend.unavailable()
            if reason:
                raise CommandError(f"streaming is unavailable here: {reason}")
            if name == "create_key":
                ingest = await self.backend.ingest(self.user_id)
                await self._emit_ingest(ingest)
                return {"key_masked": secrets.mask(ingest.stream_key)}
            if name == "new_key":
                ingest = await self.backend.new_key(self.user_id)
                logger.info(
                    "[UserStreamManager:%s] new ingest key %s", self.user_id, secrets.mask(ingest.stream_key)
                )
                await self._emit_ingest(ingest)
            else:
                ingest = await self.backend.ingest(self.user_id)
            return {"key": ingest.stream_key}
        raise CommandError(f"unknown command {name!r}")

    def _add_output(self, name: str, url: str, key: str) -> str:
        """Sync, on the broadcast DB thread: a new enabled output; its id."""
        from broadcast.models import StreamOutput

        if StreamOutput.objects.filter(user_id=int(self.user_id)).count() >= MAX_OUTPUTS:
            raise CommandError(f"at most {MAX_OUTPUTS} outputs")
        row = StreamOutput(user_id=int(self.user_id), name=name, url=url, enabled=True)
        row.set_key(key)
        row.save()
        return str(row.pk)

    def _change_output(self, output_id: str, enabled: bool | None) -> None:
        """Sync, on the broadcast DB thread: enable/disable (None: remove) one of the user's outputs."""
        from broadcast.models import StreamOutput

        rows = StreamOutput.objects.filter(pk=int(output_id), user_id=int(self.user_id))
        changed = rows.delete()[0] if enabled is None else rows.update(enabled=enabled)
        if not changed:
            raise CommandError("unknown output")

    def _output_id(self, args: dict[str, Any]) -> str:
        output_id = args.get("id")
        if isinstance(output_id, str) and output_id.isdigit() and len(output_id) < 19:
            return output_id
        if isinstance(output_id, str) and output_id in self.outputs:
            raise CommandError("this output belongs to a platform connection: change it there")
        raise CommandError("unknown output")

    def status(self) -> dict[str, Any]:
        return {
            "input": inputs.CONNECTED if self.input_connected else inputs.DISCONNECTED,
            "outputs": {oid: view.state for oid, view in self.outputs.items()},
        }


def _all_off(kept: dict[str, Any]) -> bool:
    """A kept ``outputs`` event showing no output running or failed (a run that ended
    abruptly leaves "live" behind: then the outputs are read and sent again)."""
    outputs = kept.get("outputs")
    return isinstance(outputs, list) and all(
        isinstance(o, dict) and o.get("state") == OFF and not o.get("error") for o in outputs
    )
