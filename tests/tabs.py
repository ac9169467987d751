"""A dashboard tab as the component tests and the benchmark see it: a real WebSocket that
sends commands in the wire format and sorts what it receives into replies and events."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from devtools.clients import open_socket


class Tab:
    """One open socket. ``command`` waits for its own reply; everything else received is kept."""

    _ids = itertools.count(1)

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.replies: dict[Any, dict[str, Any]] = {}
        self.other: list[dict[str, Any]] = []
        self.closed: int | None = None
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, base_url: str, session: str, **options: Any) -> Tab:
        return cls(await open_socket(base_url, session, **options))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind == "event":
                    self.events.append(frame)
                elif kind == "reply":
                    self.replies[frame.get("id")] = frame
                else:
                    self.other.append(frame)
                self._arrived.set()
        except Exception:
            pass
        finally:
            self.closed = getattr(self.ws, "close_code", None) or -1
            self._arrived.set()

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def command(
        self, component: str, name: str, args: dict[str, Any] | None = None, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Send a command and return its reply frame."""
        cid = f"c{next(self._ids)}"
        await self.send(
            {"type": "command", "component": component, "command": name, "args": args or {}, "id": cid}
        )
        return await self.reply(cid, timeout)

    async def reply(self, cid: Any, timeout: float = 15.0) -> dict[str, Any]:
        return await self.until(lambda: self.replies.get(cid), timeout, f"reply {cid}")

    async def until(self, predicate: Any, timeout: float, what: str) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                if self.closed is not None:
                    raise AssertionError(f"socket closed ({self.closed}) waiting for {what}")
                self._arrived.clear()
                await self._arrived.wait()

    def named(self, component: str, event: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if e["component"] == component and e["event"] == event]

    def stream_state(self) -> str | None:
        states = self.named("StreamStateServer", "state")
        return states[-1]["state"] if states else None

    async def pong(self, timeout: float = 10.0) -> None:
        """A ping's pong: everything sent to this tab before it has been received."""
        before = sum(1 for f in self.other if f.get("type") == "pong")
        await self.send({"type": "ping"})
        await self.until(
            lambda: sum(1 for f in self.other if f.get("type") == "pong") > before, timeout, "pong"
        )

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
