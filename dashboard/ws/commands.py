"""A dashboard socket's commands: validate, rate-limit, send to the owner worker, reply.

The tab sends (issue 11's wire format, exactly):

  {"type": "command", "component": "StreamStateServer", "command": "go_live", "args": {}, "id": "c1"}

and gets, on that socket only, ``{"type": "reply", "id": "c1", "ok": true, "result": {...}}``
or ``{"type": "reply", "id": "c1", "ok": false, "error": "<message>"}``. The user is
the socket's (its session), never the frame's. Refused here, each with an error
reply and one log line (throttled per socket for floods): a frame over
COMMAND_MAX_BYTES, a malformed frame, over COMMAND_RATE, no running manager.
The rest is decided by the worker (livestream/components/commands.py).

Replies come back on the user's control channel (every socket of the user hears
them); only this socket's ``token`` matches, and the command's ``key`` finds the
waiting request. A command not answered within COMMAND_TIMEOUT is sent once more if
the user's manager moved to another worker meanwhile (its owner died; the key
keeps it from running twice), else answered "timed out".

Redis round trips in daphne per command: one (livestream/commands.submit), two
when it is sent once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from dashboard.ws.limits import Throttled, TokenBucket
from livestream.components import commands
from livestream.components.emitter import reply_frame
from livestream.conf import get_settings

logger = logging.getLogger("dashboard.consumers")

MAX_NAME = 100  # characters of a component or command name, and of an id
MAX_DEPTH = 32  # levels of lists/objects in a command's args (a real command has 2 or 3)
MAX_PENDING = 20  # commands of one socket waiting for their reply at once

_floods = Throttled(60.0)


class BadCommand(ValueError):
    """The frame is not a valid command; the text is the reply's error."""


def validate(frame: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """``(component, command, args)`` of a command frame; BadCommand says what is wrong."""
    names = []
    for field in ("component", "command"):
        value = frame.get(field)
        if not isinstance(value, str) or not value or len(value) > MAX_NAME:
            raise BadCommand(
                f"bad command: {field!r} must be a non-empty string of at most {MAX_NAME} characters"
            )
        names.append(value)
    args = frame.get("args", {})
    if not isinstance(args, dict):
        raise BadCommand("bad command: 'args' must be an object")
    if depth(args) > MAX_DEPTH:
        raise BadCommand(f"bad command: 'args' nested deeper than {MAX_DEPTH} levels")
    return names[0], names[1], args


def depth(value: Any) -> int:
    """How deeply ``value`` nests lists and dicts (iterative: no recursion to exhaust)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


_decoder = json.JSONDecoder()


def id_of_unparsable(text: str) -> Any:
    """The top-level ``"id"`` of a JSON object too deeply nested to parse, or None.

    json.loads gives up on ~1,000 levels with RecursionError and says nothing about
    the rest; the tab still waits for a reply to its ``id``. This walks the top level
    only: each key is decoded, the value of ``"id"`` too, any other value is skipped
    by counting brackets outside strings (no recursion, linear in the frame).
    """
    try:
        i = _skip_ws(text, 0)
        if text[i] != "{":
            return None
        i += 1
        while True:
            i = _skip_ws(text, i)
            key, i = _decoder.raw_decode(text, i)
            i = _skip_ws(text, i)
            if not isinstance(key, str) or text[i] != ":":
                return None
            i = _skip_ws(text, i + 1)
            if key == "id":
                value, _ = _decoder.raw_decode(text, i)
                return client_id({"id": value})
            i = _skip_value(text, i)
            i = _skip_ws(text, i)
            if text[i] != ",":
                return None
            i += 1
    except (ValueError, IndexError, RecursionError):
        return None


def _skip_ws(text: str, i: int) -> int:
    while text[i] in " \t\r\n":
        i += 1
    return i


def _skip_value(text: str, i: int) -> int:
    """The index after the JSON value at ``i`` (brackets counted, strings skipped)."""
    level = 0
    while True:
        char = text[i]
        if char == '"':
            _, i = _decoder.raw_decode(text, i)  # a string: flat, never deep
            if level == 0:
                return i
            continue
        if char in "[{":
            level += 1
        elif char in "]}":
            level -= 1
            if level == 0:
                return i + 1
            if level < 0:
                raise ValueError("unbalanced")
        elif level == 0 and char in ",}":
            return i
        i += 1


def client_id(frame: dict[str, Any]) -> Any:
    """The tab's id, echoed in the reply; None when it is not a short string or an integer."""
    value = frame.get("id")
    if isinstance(value, str) and len(value) <= MAX_NAME:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return value
    return None


class SocketCommands:
    """The commands of one socket: ``receive`` a frame, ``arrived`` a reply from the hub."""

    def __init__(self, user_id: str, send: Callable[[str], Awaitable[None]]) -> None:
        conf = get_settings()
        self.user_id = user_id
        self.send = send
        self.token = secrets.token_hex(16)
        self.bucket = TokenBucket(conf.COMMAND_RATE, conf.COMMAND_BURST)
        self.waiting: dict[str, asyncio.Future[str]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def receive(self, frame: dict[str, Any], size: int) -> None:
        """A ``{"type": "command"}`` frame from the tab: refuse it with a reply, or start it."""
        conf = get_settings()
        cid = client_id(frame)
        if not self.bucket.take():  # first: every command frame counts, good or bad
            return await self._refuse(cid, "too many commands; slow down", flood=True)
        if size > conf.COMMAND_MAX_BYTES:
            return await self._refuse(
                cid, f"command too large ({size} bytes; at most {conf.COMMAND_MAX_BYTES})"
            )
        if len(self.waiting) >= MAX_PENDING:
            return await self._refuse(cid, f"too many commands waiting for a reply (at most {MAX_PENDING})")
        if "id" in frame and cid is None:
            return await self._refuse(
                None, f"bad command: 'id' must be a string of at most {MAX_NAME} characters or an integer"
            )
        try:
            component, name, args = validate(frame)
        except BadCommand as exc:
            return await self._refuse(cid, str(exc))
        command = commands.Command(
            user_id=self.user_id,
            component=component,
            command=name,
            args=args,
            id=cid,
            key=uuid.uuid4().hex,
            to=self.token,
            sent=time.time(),
        )
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting[command.key] = future  # counted against MAX_PENDING from now on
        task = asyncio.ensure_future(self._request(command, future))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def arrived(self, event: dict[str, Any]) -> None:
        """A reply for this socket (the hub checked the user; we check the token and key)."""
        future = self.waiting.get(event.get("key", ""))
        frame = event.get("frame")
        if future is not None and not future.done() and isinstance(frame, str):
            future.set_result(frame)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def _request(self, command: commands.Command, future: asyncio.Future[str]) -> None:
        try:
            frame = await self._attempts(command, future)
        finally:
            self.waiting.pop(command.key, None)
        await self.send(frame)

    async def _attempts(self, command: commands.Command, future: asyncio.Future[str]) -> str:
        """The reply frame: the worker's, or an error of ours. Sent at most twice (same key)."""
        timeout = get_settings().COMMAND_TIMEOUT
        where = f"command {command.component}.{command.command} of user {self.user_id}"
        try:
            owner = await commands.submit(command)
            if owner is None:
                logger.info("[PresenceConsumer] %s: no running manager", where)
                return reply_frame(command.id, False, commands.NO_MANAGER)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(future), timeout)
            # No answer. Sent once more only if the user's manager moved meanwhile (its
            # worker died): a slow owner is not asked twice.
            moved = await commands.owner(self.user_id)
            if moved is not None and moved != owner and await commands.submit(_resent(command)) == moved:
                logger.warning(
                    "[PresenceConsumer] %s: %s did not answer; sent once more to %s", where, owner, moved
                )
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), timeout)
        except Exception as exc:
            logger.warning("[PresenceConsumer] %s not sent: %r", where, exc)
            return reply_frame(command.id, False, "the server cannot reach its workers; try again")
        logger.warning("[PresenceConsumer] %s timed out after %.1fs", where, timeout)
        return reply_frame(command.id, False, "timed out")

    async def unparsable(self, text: str) -> bool:
        """A frame json.loads gave up on (nested too deep): an error reply if it names an
        ``id`` (the tab's command() promise would wait for ever otherwise); True if sent."""
        cid = id_of_unparsable(text)
        if cid is None:
            return False
        await self._refuse(cid, "bad command: not valid JSON or nested too deeply")
        return True

    async def _refuse(self, cid: Any, error: str, *, flood: bool = False) -> None:
        key = f"{self.token}:{'flood' if flood else error}"
        held = _floods.due(key) if flood else 0
        if held is not None:
            more = f" ({held} more since the last line)" if held else ""
            logger.warning("[PresenceConsumer] command of user %s refused: %s%s", self.user_id, error, more)
        await self.send(reply_frame(cid, False, error))


def _resent(command: commands.Command) -> commands.Command:
    """The same command (same key: never run twice), with a fresh age for the new owner."""
    return commands.Command(**{**command.__dict__, "sent": time.time()})
