"""Supervision of one component, in the spirit of an OTP supervisor child.

A crashing component is restarted with a fresh instance after an exponential
backoff; more than MAX_RESTARTS crashes within MAX_RESTARTS_WINDOW seconds mark
it ``failed`` and it stays down, while the user's other components keep
running. Stopping cancels it and waits SHUTDOWN_TIMEOUT at most; a component
that ignores cancellation is abandoned with a log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from livestream.components.base import Component
from livestream.conf import get_settings
from livestream.tasks import cancel_and_wait, retry_delay

logger = logging.getLogger("livestream.supervisor")


class State(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class ComponentSupervisor:
    def __init__(
        self,
        component_class: type[Component],
        user_id: str,
        on_running: Callable[[], None] | None = None,
        on_restart: Callable[[str], None] | None = None,
        token: int | None = None,
    ) -> None:
        self.component_class = component_class
        self.token = token  # the lease's fencing token: every instance carries it
        self.on_running = on_running  # told each time a fresh instance starts running
        self.on_restart = on_restart  # told the component's name at each restart (the metrics)
        self.user_id = user_id
        self.name = component_class.__name__
        self.state = State.STARTING
        self.restarts = 0
        self.component: Component | None = None
        self._crashes: deque[float] = deque()
        self._task: asyncio.Task[None] | None = None
        self.stopped = False  # asked to stop: no new instance, and the current one may not act

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"{self.name}:{self.user_id}")

    def status(self) -> dict[str, Any]:
        extra = self.component.status() if self.component is not None else {}
        return {"state": str(self.state), "restarts": self.restarts, **extra}

    async def _supervise(self) -> None:
        conf = get_settings()
        while not self.stopped:
            self.component = self.component_class(self.user_id)
            self.component.token = self.token  # before run(): its writes are fenced with it
            self.state = State.RUNNING
            if self.on_running is not None:
                self.on_running()
            try:
                await self.component.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("[UserStreamManager:%s] %s crashed", self.user_id, self.name)
            else:
                logger.info("[UserStreamManager:%s] %s finished", self.user_id, self.name)
                self.state = State.STOPPED
                return
            now = time.monotonic()
            while self._crashes and now - self._crashes[0] > conf.MAX_RESTARTS_WINDOW:
                self._crashes.popleft()
            if len(self._crashes) >= conf.MAX_RESTARTS:
                self.state = State.FAILED
                logger.error(
                    "[UserStreamManager:%s] %s failed: more than %d restarts in %ss; left down",
                    self.user_id,
                    self.name,
                    conf.MAX_RESTARTS,
                    conf.MAX_RESTARTS_WINDOW,
                )
                return
            self._crashes.append(now)
            self.restarts += 1
            if self.on_restart is not None:
                self.on_restart(self.name)
            self.state = State.RESTARTING
            delay = retry_delay(len(self._crashes), conf.RESTART_BACKOFF, conf.RESTART_BACKOFF_MAX)
            logger.warning(
                "[UserStreamManager:%s] %s restarting in %.2fs (restart %d)",
                self.user_id,
                self.name,
                delay,
                self.restarts,
            )
            await asyncio.sleep(delay)

    def cancel(self) -> None:
        """Cancel at once, without waiting (stop() waits); for fencing, where every step counts."""
        self._stopping()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _stopping(self) -> None:
        """From now on the component may not act (Component.may_act), even if it outlives
        its cancellation."""
        self.stopped = True
        if self.component is not None:
            self.component.stopped = True

    async def stop(self) -> None:
        self._stopping()
        task = self._task
        if task is None or task.done():
            if self.state != State.FAILED:
                self.state = State.STOPPED
            return
        timeout = get_settings().SHUTDOWN_TIMEOUT
        if await cancel_and_wait([task], timeout, keep_trying=True):
            logger.error(
                "[UserStreamManager:%s] %s ignored cancellation for %ss; abandoned",
                self.user_id,
                self.name,
                timeout,
            )
        self.state = State.STOPPED
