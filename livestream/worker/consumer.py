"""The worker side of the ``presence-manager`` channel (the browser side, the WebSocket
consumer, is dashboard/consumers.py).

A thin adapter: lifecycle messages from livestream.worker.Worker start and stop
the process's PresenceManager, everything else is handed to it. Unlike a stock
AsyncConsumer it never dies on a bad message (Channels would replace it with a
fresh instance with empty state), and it needs no channel of its own: the
PresenceManager listens on its own inbox.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.exceptions import StopConsumer

from livestream.worker.presence_manager import PresenceManager

logger = logging.getLogger("livestream.consumers")

_manager: PresenceManager | None = None


def get_presence_manager() -> PresenceManager | None:
    """The PresenceManager this worker process runs (None before worker.startup)."""
    return _manager


class PresenceManagerConsumer:
    """ASGI application for ``ChannelNameRouter({"presence-manager": ...})``."""

    @classmethod
    def as_asgi(cls) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await cls()(scope, receive, send)

        # What Channels' own as_asgi sets (routing introspects it); a function has no such attribute to mypy.
        app.consumer_class = cls  # type: ignore[attr-defined]
        return app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        global _manager
        if _manager is None:
            _manager = PresenceManager()
        manager = _manager
        while True:
            message = await receive()
            try:
                kind = message.get("type")
                if kind == "worker.startup":
                    await manager.start()
                elif kind == "worker.shutdown":
                    await manager.shutdown()
                    _manager = None
                    raise StopConsumer
                else:
                    await manager.handle(message)
            except StopConsumer:
                return
            except Exception:
                logger.exception("[PresenceManager] error handling %r; message dropped", message.get("type"))
