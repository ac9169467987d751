"""UserStreamManager: one per present user, supervising that user's components.

Which components: the classes it is given, or, with ``choose`` (the worker passes
livestream.choices.for_user), the user's own choice, loaded before any starts.
``apply`` starts and stops single components of a running manager (a
UserComponent row changed) without touching the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from livestream.components import emitter as component_events
from livestream.components.base import Component
from livestream.components.supervisor import ComponentSupervisor, State
from livestream.conf import get_settings

logger = logging.getLogger("livestream.presence_manager")

Chooser = Callable[[str], Awaitable[list[type[Component]]]]


def component_classes() -> list[type[Component]]:
    """The classes named in LIVESTREAM["COMPONENTS"] (validated at start: all registered)."""
    from livestream.components import registry

    return [registry.get(name) for name in get_settings().COMPONENTS]


class UserStreamManager:
    def __init__(
        self,
        user_id: str,
        components: list[type[Component]] | None = None,
        *,
        choose: Chooser | None = None,
        on_restart: Callable[[str], None] | None = None,
        token: int | None = None,
    ) -> None:
        self.user_id = user_id
        # The fencing token of the lease grant this manager runs under (livestream/ownership/
        # fencing.py): every component gets it before its run().
        self.token = token
        self.on_restart = on_restart  # a component restarted (its name): the worker counts them
        classes = component_classes() if components is None else components
        self.children = [self._supervisor(cls) for cls in classes]
        self.choose = choose
        self.started_at = time.time()
        self.stopped = False
        self._boot: asyncio.Task[None] | None = None
        # Called once, when every component first runs (the join-to-running metric).
        self.on_running: Callable[[], None] | None = None

    def _supervisor(self, cls: type[Component]) -> ComponentSupervisor:
        return ComponentSupervisor(cls, self.user_id, self._child_running, self.on_restart, self.token)

    def _child_running(self) -> None:
        if self.on_running is not None and all(c.state == State.RUNNING for c in self.children):
            callback, self.on_running = self.on_running, None
            callback()

    def start(self) -> None:
        if self.choose is None:
            for child in self.children:
                child.start()
        else:
            self._boot = asyncio.create_task(self._start_chosen(self.choose), name=f"choose:{self.user_id}")

    async def _start_chosen(self, choose: Chooser) -> None:
        """The user's own components (the given ones when they cannot be read), then start them."""
        try:
            classes = await choose(self.user_id)
        except Exception as exc:
            logger.warning(
                "[UserStreamManager:%s] component choice not read (%r); running the defaults",
                self.user_id,
                exc,
            )
            classes = [child.component_class for child in self.children]
        self.children = [self._supervisor(cls) for cls in classes]
        for child in self.children:
            child.start()

    def supervisor(self, name: str) -> ComponentSupervisor | None:
        """The supervisor of the component class named ``name``, if this manager has one."""
        return next((child for child in self.children if child.name == name), None)

    def component(self, name: str) -> Component | None:
        """The running instance of component ``name`` (None if absent or not running)."""
        child = self.supervisor(name)
        if child is None or child.state != State.RUNNING:
            return None
        return child.component

    async def apply(self, classes: list[type[Component]]) -> tuple[list[str], list[str]]:
        """Run exactly ``classes``: start the new ones, stop the ones not listed (and drop
        their sticky events); the others keep running untouched. ``(started, stopped)``."""
        if self._boot is not None and not self._boot.done():
            await asyncio.shield(self._boot)
        wanted = {cls.__name__: cls for cls in classes}
        gone = [child for child in self.children if child.name not in wanted]
        have = {child.name for child in self.children}
        added = [self._supervisor(cls) for name, cls in wanted.items() if name not in have]
        self.children = [child for child in self.children if child.name in wanted] + added
        for child in added:
            child.start()
        await asyncio.gather(*(child.stop() for child in gone))
        for child in gone:
            try:
                await component_events.forget_sticky(self.user_id, child.name, token=self.token)
            except Exception as exc:  # Redis down: a reconnecting tab may see its last state once
                logger.warning(
                    "[UserStreamManager:%s] sticky events of %s kept: %r", self.user_id, child.name, exc
                )
        return [child.name for child in added], [child.name for child in gone]

    def cancel(self) -> None:
        """Cancel every component now, before any of them runs another step; stop() still waits."""
        if self._boot is not None:
            self._boot.cancel()
        for child in self.children:
            child.cancel()

    async def stop(self) -> None:
        """Stop every component (each bounded by SHUTDOWN_TIMEOUT, in parallel)."""
        self.stopped = True
        if self._boot is not None and not self._boot.done():
            self._boot.cancel()
            await asyncio.gather(self._boot, return_exceptions=True)
        await asyncio.gather(*(child.stop() for child in self.children))

    def status(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "components": {child.name: child.status() for child in self.children},
        }
