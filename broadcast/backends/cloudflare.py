"""CloudflareBackend: Cloudflare Stream live inputs and outputs through the official SDK.

Per user, one Cloudflare *live input* (what OBS publishes to: ``rtmps.url`` +
``rtmps.streamKey``), remembered in a StreamIngest row (backend "cloudflare",
``remote_id`` = the input's uid, the key encrypted). Per running output, one *live
output* on that input (``url`` + ``streamKey``, ``enabled``), created when the output
starts and deleted when it is cancelled, so no key stays at Cloudflare longer than the
stream needs it.

What Cloudflare does and how it is handled (docs/cloudflare.md):

  404 on the input    it was deleted (dashboard, API): a new one is created and stored;
                      the Stream page then shows the new key
  401                 the token is wrong or revoked: calls fail with "Cloudflare refused
                      the API token", outputs report failed with it and retry with
                      backoff; the Stream page shows it (unavailable())
  403                 the token may not edit Stream
  429                 Retry-After is respected (the SDK's own retries are off: one place
                      decides, and an output can say what it waits for)
  unreachable, 5xx    failed with the reason, retried with backoff (1 s doubling to 60 s)

"New key": Cloudflare documents no key rotation, so the input is deleted (which blocks
current and future broadcasts to it, so the old key is refused at once) and a new one is
created; running outputs notice (an in-process wake-up, else their next poll) and move to
the new input.

"live" for an output means: it exists and is enabled at Cloudflare and the input is
connected (as recorded by broadcast.inputs: webhooks and the manager's polls). Cloudflare
reports no per-output state, so a destination that refuses the stream is not seen here.
A running output checks its live output at Cloudflare every CLOUDFLARE_POLL_INTERVAL (one
API call: Cloudflare allows 1,200 per 5 minutes per token); input changes and new keys
wake it at once.

Secrets (the token, stream keys) are never logged: ids and secrets.mask() only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from cloudflare import (
    APIConnectionError,
    APIStatusError,
    AsyncCloudflare,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)
from django.db import IntegrityError

from broadcast import inputs
from broadcast.backends.base import (
    FAILED,
    LIVE,
    OFF,
    STARTING,
    BackendError,
    BroadcastBackend,
    Ingest,
    MayAct,
    OutputSpec,
    Report,
)
from livestream.conf import get_settings
from livestream.tasks import Backoff, per_loop, stop_requested
from streampai import secrets

logger = logging.getLogger("broadcast.cloudflare")

T = TypeVar("T")

BACKEND = "cloudflare"
DEFAULT_BASE_URL = "https://api.cloudflare.com/client/v4"  # the SDK's own default
# Reasons shown on the Stream page (an output's error) and raised to callers.
REFUSED_TOKEN = "Cloudflare refused the API token"
NO_PERMISSION = "the Cloudflare API token may not edit Stream (it needs Account > Stream > Edit)"
UNREACHABLE = "Cloudflare is unreachable"
RATE_LIMITED = "Cloudflare rate limit reached"
# A live input whose status is one of these has a publisher (the documented values).
CONNECTED_STATUSES = {"connected", "reconnected"}
# Waits on 429 without Retry-After, and after other failures: 1 s doubling to 60 s.
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 60.0
# A Retry-After beyond this is treated as this (a bad header must not park an output for hours).
MAX_RETRY_AFTER = 300.0
# ingest() / new_key() / input_connected() answer a page or a tab's command: they wait out
# a 429 only this long in all, then raise (the caller retries later).
INTERACTIVE_PATIENCE = 3.0
# Cancelling an output removes it at Cloudflare within this (the caller waits 2 s).
DETACH_TIMEOUT = 1.5


class CloudflareError(BackendError):
    """A Cloudflare call failed; ``str()`` is a reason safe to show (never a secret)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after  # set for 429: seconds Cloudflare asked us to wait


@dataclass
class _LoopState:
    """What cannot cross event loops: the SDK's client (httpx pool) and the wake-ups."""

    client: AsyncCloudflare
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    # input_connected's last answer per user: (input uid, monotonic time, connected).
    polls: dict[str, tuple[str, float, bool]] = field(default_factory=dict)
    # The input state each user's manager last told us (input_state_changed).
    known: dict[str, bool] = field(default_factory=dict)

    def wakeup(self, user_id: str) -> asyncio.Event:
        """The event the user's outputs wait on until the next notify()."""
        return self.wakeups.setdefault(user_id, asyncio.Event())

    def notify(self, user_id: str) -> None:
        """Wake every output of the user that is waiting; later waits get a fresh event."""
        event = self.wakeups.pop(user_id, None)
        if event is not None:
            event.set()

    def lock(self, user_id: str) -> asyncio.Lock:
        return self.locks.setdefault(user_id, asyncio.Lock())


def make_client() -> AsyncCloudflare:
    conf = get_settings()
    return AsyncCloudflare(
        api_token=conf.CLOUDFLARE_API_TOKEN,
        base_url=conf.CLOUDFLARE_API_BASE_URL or DEFAULT_BASE_URL,
        # Retries are ours (_call): Retry-After respected, and outputs report while waiting.
        max_retries=0,
        timeout=httpx.Timeout(conf.CLOUDFLARE_TIMEOUT, connect=min(5.0, conf.CLOUDFLARE_TIMEOUT)),
    )


def missing_settings() -> list[str]:
    """The settings the backend cannot work without that are empty."""
    conf = get_settings()
    names = ("CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_API_TOKEN", "CLOUDFLARE_WEBHOOK_SECRET")
    return [name for name in names if not str(getattr(conf, name)).strip()]


def is_connected(status: Any) -> bool:
    """A live input's ``status``: documented as a string (or null); an object with
    ``current.state`` is read too, as some API answers carry one."""
    if isinstance(status, dict):
        status = (status.get("current") or {}).get("state")
    return status in CONNECTED_STATUSES


def _retry_after(exc: APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None


def _api_message(exc: APIStatusError) -> str:
    """Cloudflare's first error message (its envelope's ``errors``), short."""
    body = exc.body if isinstance(exc.body, dict) else {}
    errors = body.get("errors") or []
    first = errors[0] if errors and isinstance(errors[0], dict) else {}
    message = str(first.get("message") or f"HTTP {exc.status_code}")
    return message[:200]


class CloudflareBackend(BroadcastBackend):
    name = BACKEND

    def __init__(self) -> None:
        self._state = per_loop(lambda: _LoopState(make_client()))
        # Set by a 401 and cleared by any success: unavailable() shows it on the Stream page.
        self._token_refused = False

    # --- the interface ---------------------------------------------------------

    def unavailable(self) -> str | None:
        missing = missing_settings()
        if missing:
            return f"Cloudflare Stream is not configured: set {', '.join(missing)}"
        if self._token_refused:
            return REFUSED_TOKEN
        return None

    async def stored_ingest(self, user_id: str) -> Ingest | None:
        """The input remembered in the database (no API call: every manager start reads it)."""
        row = await _stored(user_id)
        if row is None or not row.remote_id:
            return None
        try:
            return Ingest(row.server_url, row.key)
        except secrets.SecretError:  # SECRETS_KEY changed: create_key makes a new input
            return None

    async def ingest(self, user_id: str) -> Ingest:
        """The user's live input (created on first use, recreated if Cloudflare lost it).

        When Cloudflare cannot be reached, the stored server URL and key are returned (they
        still work for OBS if the input still exists)."""
        from broadcast.models import account_pk

        if account_pk(user_id) is None:
            raise BackendError("this account cannot stream (no such user)")
        async with self._st().lock(user_id):
            row = await _stored(user_id)
            if row is not None and row.remote_id:
                try:
                    live = await self._call(self._get_input(row.remote_id), INTERACTIVE_PATIENCE)
                except NotFoundError:
                    logger.warning(
                        "[cloudflare] live input %s of user %s is gone: creating a new one",
                        row.remote_id,
                        user_id,
                    )
                    return await self._replace(user_id, row.remote_id)
                except CloudflareError as exc:
                    if exc.reason != UNREACHABLE:
                        raise
                    try:
                        stored_ingest = Ingest(row.server_url, row.key)
                    except secrets.SecretError:  # SECRETS_KEY changed: nothing to show
                        raise exc from None
                    logger.warning("[cloudflare] user %s: %s; showing the stored ingest", user_id, exc.reason)
                    return stored_ingest
                try:
                    return await _remember(user_id, row.remote_id, live)
                except _Raced:  # another process replaced it meanwhile: theirs is current
                    return await _stored_ingest(user_id)
            return await self._replace(user_id, None)

    async def new_key(self, user_id: str) -> Ingest:
        async with self._st().lock(user_id):
            row = await _stored(user_id)
            old = row.remote_id if row is not None else None
            if old:
                # Already gone (NotFoundError): the old key is refused all the same.
                with contextlib.suppress(NotFoundError):
                    await self._call(self._delete_input(old), INTERACTIVE_PATIENCE)
            ingest = await self._replace(user_id, old, delete_old=False)
            logger.info(
                "[cloudflare] user %s has a new stream key (%s)", user_id, secrets.mask(ingest.stream_key)
            )
            return ingest

    async def input_connected(self, user_id: str) -> bool:
        """Polling fallback: is OBS publishing to the user's input now? (A lost input is
        recreated, and reads as not connected.)

        Every running manager polls, and Cloudflare allows 1,200 calls per 5 minutes per
        token, so an answer that agrees with the state the manager last told us
        (input_state_changed) is reused for CLOUDFLARE_POLL_INTERVAL. One that disagrees is
        asked again each time: the manager corrects its state only when two polls in a row
        disagree with it, and a reused answer must not count as the second."""
        uid = await self._input_uid(user_id)
        state = self._st()
        cached = state.polls.get(user_id)
        if (
            cached is not None
            and cached[0] == uid
            and cached[2] == state.known.get(user_id)
            and time.monotonic() - cached[1] < get_settings().CLOUDFLARE_POLL_INTERVAL
        ):
            return cached[2]
        try:
            live = await self._call(self._get_input(uid), INTERACTIVE_PATIENCE)
        except NotFoundError:
            await self._lost_input(user_id, uid)
            return False
        connected = is_connected(getattr(live, "status", None))
        state.polls[user_id] = (uid, time.monotonic(), connected)
        return connected

    def input_state_changed(self, user_id: str, connected: bool) -> None:
        """The input came or went: outputs re-read their state now instead of at their next poll."""
        # RuntimeError: no running loop (called from sync code); the next poll sees it.
        with contextlib.suppress(RuntimeError):
            state = self._st()
            state.known[user_id] = connected
            state.notify(user_id)

    async def run_output(
        self, user_id: str, spec: OutputSpec, report: Report, may_act: MayAct | None = None
    ) -> None:
        """Keeps a live output for ``spec`` on the user's input until cancelled, then removes it.
        ``may_act`` is unused: Cloudflare, not this process, publishes to the destination,
        and a later run of the user's manager adopts the output it finds there for the same
        destination (``ensure``)."""
        run = _OutputRun(self, user_id, spec, report)
        try:
            await run.loop()
        except asyncio.CancelledError:
            await run.detach()
            report(OFF, None)
            raise

    async def aclose(self) -> None:
        """Close this event loop's HTTP client (its connections); a later call opens another."""
        await self._st().client.close()

    # --- Cloudflare calls --------------------------------------------------------

    def _st(self) -> _LoopState:
        return self._state()

    @property
    def _account(self) -> str:
        return get_settings().CLOUDFLARE_ACCOUNT_ID

    async def _call(self, request: Callable[[], Awaitable[T]], patience: float | None) -> T:
        """Make one SDK request; errors become CloudflareError (NotFoundError passes through).

        A 429 is retried after its Retry-After while the waits stay within ``patience``
        seconds (None: raise at once; the caller waits ``retry_after``)."""
        waited, backoff = 0.0, Backoff(BACKOFF_FIRST, BACKOFF_CAP)
        while True:
            try:
                result = await request()
                self._token_refused = False
                return result
            except NotFoundError:
                raise
            except RateLimitError as exc:
                delay = _retry_after(exc)
                delay = backoff.failed() if delay is None else delay
                if patience is None or waited + delay > patience:
                    raise CloudflareError(RATE_LIMITED, retry_after=delay) from None
                logger.info("[cloudflare] rate limited; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                waited += delay
            except AuthenticationError:
                self._token_refused = True
                raise CloudflareError(REFUSED_TOKEN) from None
            except PermissionDeniedError:
                raise CloudflareError(NO_PERMISSION) from None
            except APIConnectionError as exc:
                if stop_requested():  # our cancel, as httpx reports one that lands mid-request
                    raise asyncio.CancelledError from exc
                raise CloudflareError(UNREACHABLE) from None
            except APIStatusError as exc:
                raise CloudflareError(f"Cloudflare answered {exc.status_code}: {_api_message(exc)}") from None

    def _get_input(self, uid: str) -> Callable[[], Awaitable[Any]]:
        live_inputs, account = self._st().client.stream.live_inputs, self._account
        return lambda: live_inputs.get(uid, account_id=account)

    def _delete_input(self, uid: str) -> Callable[[], Awaitable[Any]]:
        live_inputs, account = self._st().client.stream.live_inputs, self._account
        return lambda: live_inputs.delete(uid, account_id=account)

    def _create_input(self, user_id: str) -> Callable[[], Awaitable[Any]]:
        live_inputs, account = self._st().client.stream.live_inputs, self._account
        # meta names the user, so an input seen in the Cloudflare dashboard can be traced back.
        return lambda: live_inputs.create(
            account_id=account,
            meta={"name": f"streampai user {user_id}", "streampai_user": str(user_id)},
            recording={"mode": "off"},
        )

    async def _replace(self, user_id: str, old_uid: str | None, delete_old: bool = True) -> Ingest:
        """Create a live input for the user and store it in place of ``old_uid``."""
        live = await self._call(self._create_input(user_id), INTERACTIVE_PATIENCE)
        uid = str(live.uid) if live is not None and live.uid else ""
        if not uid:
            raise CloudflareError("Cloudflare answered without a live input uid")
        try:
            ingest = await _remember(user_id, uid, live, expect=old_uid)
        except _Raced:
            # Another process replaced it first: keep theirs, drop ours.
            await self._forget_input(uid)
            return await _stored_ingest(user_id)
        logger.info("[cloudflare] user %s: live input %s created", user_id, uid)
        if old_uid and delete_old:
            await self._forget_input(old_uid)
        self._st().notify(user_id)  # outputs move to the new input
        return ingest

    async def _forget_input(self, uid: str) -> None:
        with contextlib.suppress(NotFoundError, CloudflareError):
            await self._call(self._delete_input(uid), INTERACTIVE_PATIENCE)

    async def _input_uid(self, user_id: str) -> str:
        row = await _stored(user_id)
        if row is not None and row.remote_id:
            return row.remote_id
        await self.ingest(user_id)
        row = await _stored(user_id)
        assert row is not None
        return row.remote_id

    async def _lost_input(self, user_id: str, uid: str) -> None:
        """Cloudflare said 404 under the input: make a new one if the input itself is gone
        (not just an output), unless someone already did."""
        try:
            await self._call(self._get_input(uid), INTERACTIVE_PATIENCE)
            return  # the input is there: an output vanished, the caller recreates it
        except NotFoundError:
            pass
        async with self._st().lock(user_id):
            row = await _stored(user_id)
            if row is not None and row.remote_id == uid:
                logger.warning(
                    "[cloudflare] live input %s of user %s is gone: creating a new one", uid, user_id
                )
                await self._replace(user_id, uid, delete_old=False)


def destination(spec: OutputSpec) -> tuple[str, str]:
    """(url, streamKey) for Cloudflare's output: the spec's, or, when its key is empty, the
    URL's last path segment as the key (one URL as a platform shows it, ".../app/<key>")."""
    if spec.key:
        return spec.url, spec.key
    base, _, key = spec.url.rstrip("/").rpartition("/")
    return (base, key) if "://" in base and key else (spec.url, "")


class _Raced(Exception):
    """The stored input changed while we made a new one."""


async def _stored(user_id: str) -> Any:
    from broadcast.models import StreamIngest, account_pk

    pk = account_pk(user_id)
    if pk is None:
        return None
    return await StreamIngest.objects.filter(user_id=pk, backend=BACKEND).afirst()


async def _stored_ingest(user_id: str) -> Ingest:
    row = await _stored(user_id)
    if row is None:
        raise CloudflareError("the user's live input vanished while it was being replaced; retry")
    return Ingest(row.server_url, row.key)


async def _remember(user_id: str, uid: str, live: Any, expect: str | None = None) -> Ingest:
    """Store the input's uid, server URL and key (encrypted) for the user; its Ingest.

    ``expect``: the uid the row must still hold (None: no row, or this uid already), else
    _Raced: two processes replacing the same input agree on one."""
    from broadcast.models import StreamIngest, key_hash

    rtmps = getattr(live, "rtmps", None)
    server_url = str(getattr(rtmps, "url", "") or "")
    key = str(getattr(rtmps, "stream_key", "") or "")
    if not server_url or not key:
        raise CloudflareError("Cloudflare answered without the input's RTMPS URL and key")
    ingest = Ingest(server_url, key)
    row = await _stored(user_id)
    if row is None:
        row = StreamIngest(user_id=int(user_id), backend=BACKEND, remote_id=uid, server_url=server_url)
        row.set_key(key)
        try:
            await row.asave()
        except IntegrityError:
            raise _Raced() from None
        return ingest
    if row.remote_id == uid and row.server_url == server_url and row.key_hash == key_hash(key):
        return ingest  # unchanged: no write
    current = row.remote_id or None
    if current not in (expect, uid):
        raise _Raced()
    probe = StreamIngest(user_id=int(user_id))
    probe.set_key(key)
    updated = await StreamIngest.objects.filter(pk=row.pk, remote_id=row.remote_id).aupdate(
        remote_id=uid, server_url=server_url, key_hash=probe.key_hash, key_encrypted=probe.key_encrypted
    )
    if not updated:
        raise _Raced()
    return ingest


class _OutputRun:
    """One output's life: attach to the input, keep it enabled, report, detach on cancel."""

    def __init__(self, backend: CloudflareBackend, user_id: str, spec: OutputSpec, report: Report) -> None:
        self.backend, self.user_id, self.spec, self._report = backend, user_id, spec, report
        self.target = destination(spec)  # (url, streamKey) as Cloudflare stores them
        self.input_uid: str | None = None
        self.output_uid: str | None = None
        self.last: tuple[str, str | None] | None = None
        self.connected = False

    def report(self, state: str, error: str | None = None) -> None:
        if self.last != (state, error):
            self.last = (state, error)
            if state == FAILED:
                logger.warning(
                    "[cloudflare] output %s of user %s failed: %s", self.spec.id, self.user_id, error
                )
            self._report(state, error)

    @property
    def outputs(self) -> Any:
        return self.backend._st().client.stream.live_inputs.outputs

    async def loop(self) -> None:
        """Attach, then re-check the output at Cloudflare every CLOUDFLARE_POLL_INTERVAL and
        the input state (Redis, set by webhooks and polls) whenever woken.

        Few API calls on purpose: Cloudflare allows 1,200 per 5 minutes per token for the
        whole account, so a running output costs one call per poll interval."""
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_CAP)
        poll = get_settings().CLOUDFLARE_POLL_INTERVAL
        checked_at = float("-inf")
        self.report(STARTING)
        while True:
            if stop_requested():  # a cancel the SDK (httpx) reported as an error: stop now
                raise asyncio.CancelledError
            wakeup = self.backend._st().wakeup(self.user_id)
            try:
                uid = await self.backend._input_uid(self.user_id)
                now = time.monotonic()
                if uid != self.input_uid or self.output_uid is None or now - checked_at >= poll:
                    await self.ensure(uid)
                    checked_at = now
                backoff.reset()
                self.report(LIVE if await self.input_live() else STARTING)
                delay = max(0.0, poll - (time.monotonic() - checked_at))
            except NotFoundError:
                # The input is gone (deleted, or a new key): recreate it, then the output on it.
                if self.input_uid:
                    await self.backend._lost_input(self.user_id, self.input_uid)
                self.input_uid = self.output_uid = None
                continue
            except CloudflareError as exc:
                if exc.retry_after is not None:  # 429: wait as asked, no failure to show
                    delay = exc.retry_after
                else:
                    self.report(FAILED, exc.reason)
                    delay = backoff.failed()
            await _wait(wakeup, delay)

    async def input_live(self) -> bool:
        """The user's input state as recorded (webhooks, polls); the last one if Redis fails."""
        try:
            self.connected = (await inputs.get_input(self.user_id)).connected
        except Exception as exc:  # Redis trouble: keep reporting what we knew
            logger.warning(
                "[cloudflare] output %s of user %s: input state unreadable: %r",
                self.spec.id,
                self.user_id,
                type(exc).__name__,
            )
        return self.connected

    async def ensure(self, uid: str) -> None:
        """Make sure the output exists on input ``uid`` and is enabled."""
        call = self.backend._call
        if uid != self.input_uid:
            self.input_uid, self.output_uid = uid, None
        account = self.backend._account
        outputs = self.outputs
        page = await call(lambda: outputs.list(uid, account_id=account), None)
        existing = [item async for item in page]
        mine = next((o for o in existing if o.uid == self.output_uid), None)
        if mine is None:
            # After a crash of the worker that ran it, the output is still there: adopt it
            # (same destination) rather than make a second publisher to the same place.
            mine = next((o for o in existing if (o.url, o.stream_key) == self.target), None)
        if mine is None:
            url, key = self.target
            mine = await call(
                lambda: outputs.create(uid, account_id=account, url=url, stream_key=key, enabled=True), None
            )
            if mine is None or not mine.uid:
                raise CloudflareError("Cloudflare answered without the live output's uid")
            logger.info(
                "[cloudflare] output %s of user %s: live output %s created",
                self.spec.id,
                self.user_id,
                mine.uid,
            )
        elif not mine.enabled:
            out_uid = self.output_uid = str(mine.uid)  # known before the await: a cancel removes it
            await call(
                lambda: outputs.update(out_uid, account_id=account, live_input_identifier=uid, enabled=True),
                None,
            )
        self.output_uid = str(mine.uid)

    async def detach(self) -> None:
        """Remove the output at Cloudflare (stop sending there) within DETACH_TIMEOUT.

        Cancelled before the create's answer arrived, the output may exist without our
        knowing its uid: then the input's outputs are listed and the one for this
        destination is removed."""
        if not self.input_uid:
            return
        try:
            async with asyncio.timeout(DETACH_TIMEOUT):
                await self._remove(self.input_uid)
        except NotFoundError:
            pass
        except (CloudflareError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, CloudflareError) else "timed out"
            logger.warning(
                "[cloudflare] output %s of user %s: could not remove its live output (%s); "
                "it stays enabled at Cloudflare until the next start adopts it",
                self.spec.id,
                self.user_id,
                reason,
            )
        self.output_uid = None

    async def _remove(self, uid: str) -> None:
        call, account, outputs = self.backend._call, self.backend._account, self.outputs
        out_uid = self.output_uid
        if out_uid is None:
            page = await call(lambda: outputs.list(uid, account_id=account), None)
            found = [o async for o in page if (o.url, o.stream_key) == self.target]
            if not found or not found[0].uid:
                return
            out_uid = str(found[0].uid)
        await call(lambda: outputs.delete(out_uid, account_id=account, live_input_identifier=uid), None)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Sleep ``timeout`` or until ``event`` is set.

    Not asyncio.wait_for: on Python 3.11 a cancel arriving as its timeout fires can be
    swallowed (turned into TimeoutError), and the output would never stop."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
