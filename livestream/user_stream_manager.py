"""UserStreamManager: one per present user, supervising that user's components."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from django.utils.module_loading import import_string

from livestream.components.base import Component
from livestream.conf import get_settings
from livestream.supervisor import ComponentSupervisor, State


def component_classes() -> list[type[Component]]:
    """The classes named in LIVESTREAM["COMPONENTS"]; ImportError names the bad path."""
    return [import_string(path) for path in get_settings().COMPONENTS]


class UserStreamManager:
    def __init__(self, user_id: str, components: list[type[Component]] | None = None) -> None:
        self.user_id = user_id
        classes = component_classes() if components is None else components
        self.children = [ComponentSupervisor(cls, user_id, self._child_running) for cls in classes]
        self.started_at = time.time()
        self.stopped = False
        # Called once, when every component first runs (the join-to-running metric).
        self.on_running: Callable[[], None] | None = None

    def _child_running(self) -> None:
        if self.on_running is not None and all(c.state == State.RUNNING for c in self.children):
            callback, self.on_running = self.on_running, None
            callback()

    def start(self) -> None:
        for child in self.children:
            child.start()

    def cancel(self) -> None:
        """Cancel every component now, before any of them runs another step; stop() still waits."""
        for child in self.children:
            child.cancel()

    async def stop(self) -> None:
        """Stop every component (each bounded by SHUTDOWN_TIMEOUT, in parallel)."""
        self.stopped = True
        await asyncio.gather(*(child.stop() for child in self.children))

    def status(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "components": {child.name: child.status() for child in self.children},
        }
