"""One way to run background tasks: a scope whose children live and die together.

In the spirit of aiotools' Supervisor: a child that raises is logged and its
siblings keep running; shutdown is "trigger, then wait": ``close()`` cancels
every child and waits a bounded time, naming the ones that ignored cancellation
(on Python 3.11 a cancellation can be lost inside a client library, and a stuck
child must never hang a worker's shutdown). ``every`` is the one loop for periodic
work, with the one retry policy: a failing step is logged and retried after the
interval, backing off to ``MAX_BACKOFF``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

MAX_BACKOFF = 5.0


class TaskScope:
    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self.logger = logger
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def every(
        self,
        name: str,
        interval: Callable[[], float],
        step: Callable[[], Awaitable[Any]],
        first_delay: float = 0.0,
    ) -> asyncio.Task[Any]:
        """Run ``step`` every ``interval()`` seconds (the first after ``first_delay``) until
        closed; a failing step is logged and retried later."""

        async def loop() -> None:
            await asyncio.sleep(first_delay)
            failures = 0
            while not self.closing:
                try:
                    await step()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    self.logger.warning("[%s] %s failed: %r", self.name, name, exc)
                wait = interval() if failures == 0 else min(interval() * 2 ** (failures - 1), MAX_BACKOFF)
                await asyncio.sleep(wait)

        return self.spawn(loop(), name)

    async def close(self, timeout: float) -> list[str]:
        """Cancel every child and wait at most ``timeout``; returns the names of those still running."""
        self.closing = True
        tasks = [t for t in self.tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return []
        _, stuck = await asyncio.wait(tasks, timeout=timeout)
        names = sorted(t.get_name() for t in stuck)
        if names:
            self.logger.warning("[%s] tasks ignored cancellation: %s", self.name, names)
        return names

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.logger.error(
                "[%s] background task %s failed", self.name, task.get_name(), exc_info=task.exception()
            )
