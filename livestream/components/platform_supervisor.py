"""PlatformSupervisor: the user's connected platforms (issue 21), one child per enabled connection.

One-for-one supervision, as the original's DynamicSupervisor: each connection's
child runs its platform's session (platforms/clients.py) in a loop of its own and
restarts it with backoff (PLATFORM_RETRY_MIN doubling up to PLATFORM_RETRY_MAX,
reset once connected); a refused login stops that child only, shown as ``failed``
with the reason until the connection is saved again. No child's failure reaches
its siblings, this component or the manager.

A chat session is an effect outside Redis (issue 19, livestream/ownership/fencing.py): each
child registers with ``register_external_effect``, so the lease keeper cancels it (closing
its connection) before the lease can lapse unrenewed or when another worker holds it; and
every send to a platform (chat, the stream's title) is made only while ``may_act()``, checked
right before it: a worker woken from a freeze past its lease sends nothing for a user another
worker runs by now.

A connection added, changed, disabled or removed while this runs starts or stops
its child at once: platforms/signals.py sends ``component.config`` naming this
component, and the owner's worker calls ``reconfigure()`` (livestream/components/choices.py).

Wire format (pinned, issue 21):
  event "chat":      {"platform", "channel", "id", "author", "text", "ts", "badges"} (not sticky)
  event "platforms": {"platforms": [{"id", "platform", "name", "state", "error"}]} (sticky),
                     state in connecting / connected / failed / off
  command "recent_chat" {} -> {"lines": [chat data...]}: the last 100 lines this manager saw (in
                     memory: a tab opened later shows them; after a failover the list starts empty)
  command "set_stream_info" {"title", "category"} -> the Twitch channel's title and category
                     (Helix PATCH /channels) on every enabled Twitch connection
  command "send_chat" {"text", "platforms": [ids] (optional: all with chat)}
                     -> {"results": {id: {"id": <message id>}}}; refused (CommandError) as a
                     whole, before anything is sent, when a target is not connected, the text is
                     too long or the platform's send limit is reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from redis.exceptions import RedisError

from livestream import logformats
from livestream.components.base import CommandError, Component
from livestream.conf import get_settings
from livestream.tasks import Backoff, cancel_and_wait, stop_requested

logger = logging.getLogger("livestream.platforms")

CONNECTING, CONNECTED, FAILED, OFF = "connecting", "connected", "failed", "off"
RECENT = 100
# A send refused because this worker's lease may have lapsed (it was frozen or cut off).
NOT_OWNER = "this worker may no longer run your stream; try again in a moment"
PLATFORM_NAMES = {"twitch": "Twitch", "youtube": "YouTube", "custom": "Custom RTMP"}


async def load_connections(user_id: str) -> list[Any]:
    from platforms.clients import load_connections as load

    return await load(user_id)


class Child:
    """One enabled connection's session loop and its state."""

    def __init__(self, owner: PlatformSupervisor, conn: Any) -> None:
        from platforms.clients import client_for

        self.owner = owner
        self.conn = conn
        self.client = client_for(conn, owner.chat)
        bucket = getattr(self.client, "bucket", None)
        if bucket is not None:  # a send limit outlives restarts of the child (disable/enable, a new token)
            self.client.bucket = owner.buckets.setdefault(conn.pk, bucket)  # type: ignore[attr-defined]
        self.state = CONNECTING
        self.error = ""
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        task = self.task = asyncio.create_task(self._supervise(), name=f"platform:{self.conn.public_id}")
        loop = asyncio.get_running_loop()

        def close() -> None:  # from the lease keeper's thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing runs
                loop.call_soon_threadsafe(task.cancel)

        unregister = self.owner.register_external_effect(close)
        task.add_done_callback(lambda _: unregister())

    async def _set(self, state: str, error: str = "") -> None:
        if (state, error) != (self.state, self.error):
            self.state, self.error = state, error
            await self.owner.publish()

    async def _connected(self) -> None:
        logger.info(logformats.PLATFORM_CONNECTED, self.owner.user_id, self.conn.public_id)
        self.backoff.reset()
        await self._set(CONNECTED)

    async def _supervise(self) -> None:
        from platforms.api import ApiError, RateLimited, Waiting
        from platforms.clients import LoginFailed, Reconnect
        from platforms.tokens import Revoked

        conf = get_settings()
        self.backoff = Backoff(conf.PLATFORM_RETRY_MIN, conf.PLATFORM_RETRY_MAX)
        user, cid = self.owner.user_id, self.conn.public_id
        while True:
            try:
                await self.client.session(self._connected)
                why, why_kind = "session ended", ""
            except asyncio.CancelledError:
                raise
            except (LoginFailed, Revoked) as exc:
                reason = f"{exc} (reconnect {PLATFORM_NAMES.get(self.conn.platform, self.conn.platform)})"
                logger.warning(logformats.PLATFORM_FAILED, user, cid, reason)
                await self._set(FAILED, reason)
                return  # the same token will be refused again: wait for the connection to change
            except Reconnect as exc:
                logger.info(logformats.PLATFORM_RETRY, user, cid, exc, 0.0)
                await self._set(CONNECTING)
                continue
            except RateLimited as exc:  # the API said how long
                logger.warning(logformats.PLATFORM_RETRY, user, cid, exc, exc.retry_after)
                await self._set(CONNECTING, str(exc))
                await asyncio.sleep(exc.retry_after)
                continue
            except Exception as exc:  # network, protocol, quota, a bug: this child only, with backoff
                if stop_requested():  # our cancel, as an HTTP client reports one mid-request
                    raise asyncio.CancelledError from exc
                why = str(exc) or type(exc).__name__
                why_kind = "wait" if isinstance(exc, Waiting) else "api" if isinstance(exc, ApiError) else ""
                if not isinstance(exc, (OSError, ConnectionError, TimeoutError, ApiError)):
                    logger.exception("[UserStreamManager:%s] platform %s crashed", user, cid)
            delay = self.backoff.failed()
            logger.warning(logformats.PLATFORM_RETRY, user, cid, why, delay)
            # One drop, or nothing to connect to yet (no live broadcast), shows "connecting";
            # failing again and again, or an API's refusal (quota), shows "failed" and why
            # (while it keeps retrying).
            transient = why_kind == "wait" or (self.backoff.failures <= 1 and why_kind != "api")
            await self._set(CONNECTING if transient else FAILED, why)
            await asyncio.sleep(delay)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.conn.public_id,
            "platform": self.conn.platform,
            "name": self.conn.name,
            "state": self.state,
            "error": self.error,
        }


class PlatformSupervisor(Component):
    """Runs one child per enabled connection of the user (see the module docstring)."""

    def __init__(self, user_id: str) -> None:
        super().__init__(user_id)
        self.connections: list[Any] = []
        self.children: dict[int, Child] = {}
        self.buckets: dict[int, Any] = {}  # connection pk -> its send limit's token bucket
        self._reload = asyncio.Event()
        self._published: list[dict[str, Any]] | None = None
        self._publish_lock = asyncio.Lock()
        self._emit_failed_at = 0.0
        # The last RECENT chat lines, in memory only: a tab that opens later asks for them
        # (``recent_chat``) instead of every line costing a Redis write for a replay log.
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    async def reconfigure(self) -> None:
        """The user's connections changed (called by the worker): re-read them now."""
        self._reload.set()

    async def run(self) -> None:
        try:
            while True:
                self._reload.clear()
                self.connections = await load_connections(self.user_id)
                await self._sync()
                await self.publish()
                await self._reload.wait()
        finally:
            await self._stop(list(self.children.values()))
            self.children.clear()

    def _wanted(self) -> dict[int, Any]:
        return {c.pk: c for c in self.connections if c.enabled and not c.revoked}

    async def _sync(self) -> None:
        """Start the new or changed enabled connections' children, stop the others'."""
        wanted = self._wanted()
        gone = [
            child
            for pk, child in self.children.items()
            if pk not in wanted or wanted[pk].version != child.conn.version
        ]
        for child in gone:
            del self.children[child.conn.pk]
        await self._stop(gone)
        for pk, conn in wanted.items():
            if pk not in self.children:
                child = self.children[pk] = Child(self, conn)
                child.start()

    async def _stop(self, children: list[Child]) -> None:
        tasks = [child.task for child in children if child.task is not None]
        await cancel_and_wait(tasks, get_settings().SHUTDOWN_TIMEOUT / 2, keep_trying=True)
        for child in children:
            logger.info(logformats.PLATFORM_STOPPED, self.user_id, child.conn.public_id)

    def platforms(self) -> list[dict[str, Any]]:
        """The ``platforms`` event's list: every connection, enabled or not."""
        listed = []
        for conn in self.connections:
            child = self.children.get(conn.pk)
            if child is not None:
                listed.append(child.describe())
                continue
            error = (
                f"{conn.revoked} (reconnect {PLATFORM_NAMES.get(conn.platform, conn.platform)})"
                if conn.revoked
                else ""
            )
            listed.append(
                {
                    "id": conn.public_id,
                    "platform": conn.platform,
                    "name": conn.name,
                    "state": FAILED if conn.revoked else OFF,
                    "error": error,
                }
            )
        return listed

    async def publish(self) -> None:
        """The sticky ``platforms`` event, when the list changed."""
        async with self._publish_lock:
            listed = self.platforms()
            if listed == self._published:
                return
            try:
                await self.emit("platforms", {"platforms": listed}, sticky=True)
                self._published = listed
            except RedisError as exc:  # shown again with the next change
                logger.warning("[UserStreamManager:%s] platforms state not published: %r", self.user_id, exc)

    async def chat(self, data: dict[str, Any]) -> None:
        """A chat message from a platform to every tab (in the platform's order)."""
        self.recent.append(data)
        try:
            await self.emit("chat", data)
        except RedisError as exc:  # Redis down: the message is lost to the tabs; one line a minute
            now = time.monotonic()
            if now - self._emit_failed_at > 60:
                self._emit_failed_at = now
                logger.warning("[UserStreamManager:%s] chat messages not delivered: %r", self.user_id, exc)

    def status(self) -> dict[str, Any]:
        return {"platforms": self.platforms()}

    async def on_command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "send_chat":
            return await self.send_chat(args)
        if name == "set_stream_info":
            return await self.set_stream_info(args)
        if name == "recent_chat":
            return {"lines": list(self.recent)}
        return await super().on_command(name, args)

    async def send_chat(self, args: dict[str, Any]) -> dict[str, Any]:
        from platforms.twitch.irc import clean_text

        text = args.get("text")
        if not isinstance(text, str) or not clean_text(text):
            raise CommandError("text must be a non-empty string")
        text = clean_text(text)
        asked = args.get("platforms")
        chat = {c.conn.public_id: c for c in self.children.values() if c.client.has_chat}
        if asked is None:
            targets = list(chat.values())
            if not targets:
                raise CommandError("no platform with chat is connected")
        else:
            if not isinstance(asked, list) or not asked or not all(isinstance(i, str) for i in asked):
                raise CommandError("platforms must be a non-empty list of platform ids")
            unknown = [i for i in asked if i not in chat]
            if unknown:
                raise CommandError(f"no chat on {', '.join(unknown)}")
            targets = [chat[i] for i in dict.fromkeys(asked)]
        refused = [f"{c.conn.public_id} {why}" for c in targets if (why := c.client.refusal(text))]
        if refused:
            raise CommandError("; ".join(refused))
        for child in targets:  # no await since the checks: the limits cannot change meanwhile
            child.client.reserve()
        results: dict[str, Any] = {}
        failed: list[str] = []
        for child in targets:
            if not self.may_act():  # right before the send: no await in between
                failed.append(f"{child.conn.public_id} not sent: {NOT_OWNER}")
                continue
            try:
                results[child.conn.public_id] = await child.client.send(text)
            except (OSError, ConnectionError) as exc:
                failed.append(f"{child.conn.public_id} not sent: {exc or 'not connected'}")
        if failed:
            sent = f" (sent on {', '.join(results)})" if results else ""
            raise CommandError("; ".join(failed) + sent)
        return {"results": results}

    async def set_stream_info(self, args: dict[str, Any]) -> dict[str, Any]:
        """Send the stream's title and category to every enabled connection that has them (the
        page sends it with "Go live"): Twitch's channel title and category, the title of
        YouTube's active broadcast (YouTube broadcasts have no category)."""
        from platforms.twitch import helix
        from platforms.youtube import api as youtube

        title, category = args.get("title", ""), args.get("category", "")
        if (
            not isinstance(title, str)
            or not isinstance(category, str)
            or len(title) > 140
            or len(category) > 100
        ):
            raise CommandError("title (at most 140 characters) and category must be strings")
        if not title.strip() and not category.strip():
            return {"results": {}}
        results: dict[str, Any] = {}
        failed: list[str] = []
        for child in list(self.children.values()):
            platform = child.conn.platform
            if platform not in ("twitch", "youtube") or (platform == "youtube" and not title.strip()):
                continue
            if not self.may_act():
                failed.append(f"{child.conn.public_id}: {NOT_OWNER}")
                continue
            try:
                if platform == "twitch":
                    await helix.update_channel(child.client.creds, title.strip(), category.strip())
                else:
                    await youtube.update_title(child.client.creds, title.strip())
                results[child.conn.public_id] = {"ok": True}
            except Exception as exc:  # one platform's refusal does not stop the others
                failed.append(f"{child.conn.public_id}: {exc}")
        if failed:
            raise CommandError("; ".join(failed))
        return {"results": results}
