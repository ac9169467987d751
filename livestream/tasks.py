"""One way to run background tasks: a scope whose children live and die together.

In the spirit of aiotools' Supervisor: a child that raises is logged and its
siblings keep running; shutdown is "trigger, then wait": ``close()`` cancels
every child and waits a bounded time, naming the ones that ignored cancellation
(on Python 3.11 a cancellation can be lost inside a client library, and a stuck
child must never hang a worker's shutdown). ``every`` is the one loop for periodic
work. The same two rules serve code outside a scope (the worker, a component's
supervisor, the dashboard's tracker):

  shutdown  ``cancel_and_wait``: cancel, wait a bounded time, return the stuck
            tasks (``describe`` names them, with where each is stuck).
  retries   ``retry_delay``: the one backoff policy of every retry loop: ``first``
            after the first failure, doubling with each failure in a row, capped
            (``Backoff`` counts the failures for a loop).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

V = TypeVar("V")

MAX_BACKOFF = 5.0


def stop_requested() -> bool:
    """True once this task was asked to stop, even if a library turned the cancellation into
    another error on the way (redis-py's connect and pool waits can report a cancel that
    lands in their timeout as a ConnectionError): a retry loop must then stop, not retry."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def retry_delay(failures: int, first: float = 0.1, cap: float = MAX_BACKOFF) -> float:
    """How long to wait after ``failures`` failures in a row (1 or more) before trying again."""
    return min(first * 2 ** (max(failures, 1) - 1), cap)


class Backoff:
    """A retry loop's failures in a row, and how long to wait after each (``retry_delay``)."""

    def __init__(self, first: float = 0.1, cap: float = MAX_BACKOFF) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def failed(self) -> float:
        """Count a failure; returns how long to wait before trying again."""
        self.failures += 1
        return retry_delay(self.failures, self.first, self.cap)

    def reset(self) -> None:
        self.failures = 0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], timeout: float, keep_trying: bool = False
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them at most ``timeout``; returns those still running.
    With ``keep_trying``, those are cancelled again every ``timeout`` until they end
    (``keep_cancelling``): for tasks that act while they run, not at a process's exit."""
    running = [task for task in tasks if not task.done()]
    for task in running:
        task.cancel()
    if not running:
        return set()
    _, stuck = await asyncio.wait(running, timeout=timeout)
    if stuck and keep_trying:
        keep_cancelling(stuck, max(timeout, 0.1))
    return stuck


_reapers: set[asyncio.Task[None]] = set()


def keep_cancelling(tasks: Iterable[asyncio.Task[Any]], every: float) -> None:
    """Cancel ``tasks`` again every ``every`` seconds, in the background, until they end.

    On Python 3.11 a cancellation can be lost: ``asyncio.wait_for`` returns the result when
    its inner call finished just as the cancel landed, and redis-py sends every command
    through it. A component's loop that lost its one cancel then ran on: in the fourth
    30-minute nemesis run an abandoned component kept acting for 12 minutes after its stop.
    Another cancel lands elsewhere (a sleep, the next command) and ends it."""
    pending = {task for task in tasks if not task.done()}
    if not pending:
        return

    async def reap() -> None:
        left = pending
        while left:
            for task in left:
                task.cancel()
            _, left = await asyncio.wait(left, timeout=every)

    reaper = asyncio.get_running_loop().create_task(reap(), name="keep-cancelling")
    _reapers.add(reaper)
    reaper.add_done_callback(_reapers.discard)


def describe(tasks: Iterable[asyncio.Task[Any]]) -> str:
    """``name at file:line function`` of each task, for a log line about stuck tasks."""
    return "; ".join(f"{task.get_name()} at {_where(task)}" for task in tasks)


def _where(task: asyncio.Task[Any]) -> str:
    frames = task.get_stack(limit=1)
    if not frames:
        return "?"
    code = frames[-1].f_code
    return f"{code.co_filename.rsplit('/', 2)[-1]}:{frames[-1].f_lineno} {code.co_name}"


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
                wait = interval() if failures == 0 else retry_delay(failures, interval())
                await asyncio.sleep(wait)

        return self.spawn(loop(), name)

    async def close(self, timeout: float) -> list[str]:
        """Cancel every child and wait at most ``timeout``; returns the names of those still running."""
        self.closing = True
        stuck = await cancel_and_wait(self.tasks, timeout)
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


def per_loop(factory: Callable[[], V]) -> Callable[[], V]:
    """A getter of one ``factory()`` per running event loop: clients, locks and events
    cannot cross loops (tests and the lease keeper's thread run loops of their own)."""
    instances: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, V] = weakref.WeakKeyDictionary()

    def get() -> V:
        loop = asyncio.get_running_loop()
        found = instances.get(loop)
        if found is None:
            found = instances[loop] = factory()
        return found

    return get
