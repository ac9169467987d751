"""Misbehaving components for the supervision fault tests.

Configured into real worker processes through the environment, e.g.
``LIVESTREAM_COMPONENTS=Crasher,ConsoleLogger`` with ``DJANGO_SETTINGS_MODULE=tests.settings``,
which registers them (tests/settings.py); production settings never know them.
Each logs as the real ones do: ``[UserStreamManager:<user>] <Component> ...``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, ClassVar

from livestream.components.base import CommandError, Component

logger = logging.getLogger("livestream.test_components")


class Crasher(Component):
    """Crashes as soon as it runs: restarted with backoff, then marked failed."""

    async def run(self) -> None:
        logger.info("[UserStreamManager:%s] Crasher running; about to crash", self.user_id)
        raise RuntimeError(f"Crasher of user {self.user_id} crashed on purpose")


class SlowCrasher(Component):
    """Crashes every TEST_SLOW_CRASH_AFTER seconds (default 1.5): never 4 times in 5 s."""

    async def run(self) -> None:
        await asyncio.sleep(float(os.environ.get("TEST_SLOW_CRASH_AFTER", "1.5")))
        raise RuntimeError(f"SlowCrasher of user {self.user_id} crashed on purpose")


class Stubborn(Component):
    """Ignores cancellation: stopping it must give up after SHUTDOWN_TIMEOUT."""

    async def run(self) -> None:
        while True:
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                logger.info("[UserStreamManager:%s] Stubborn ignoring cancellation", self.user_id)


class Stuck(Component):
    """Goes on running for STUCK_FOR after its first cancellation, as a component does whose
    Redis call waits out a failover; counts its instances running at once (``most``)."""

    STUCK_FOR = 0.5
    running: ClassVar[int] = 0
    most: ClassVar[int] = 0

    async def run(self) -> None:
        Stuck.running += 1
        Stuck.most = max(Stuck.most, Stuck.running)
        loop = asyncio.get_running_loop()
        stuck_until: float | None = None
        try:
            while stuck_until is None or loop.time() < stuck_until:
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    stuck_until = stuck_until or loop.time() + self.STUCK_FOR
            raise asyncio.CancelledError  # the cancellation, taken at last
        finally:
            Stuck.running -= 1


class Echo(Component):
    """Answers commands, to test the path from a tab to the component and back.

    ``whoami`` replies with the worker's pid and the args; ``slow`` counts its runs in
    Redis (``<KEY_PREFIX>:test:slow:<user>``) and then sleeps, so a test can kill the
    worker while it is in flight; ``crash`` raises; ``list`` returns a non-dict;
    ``refuse`` raises CommandError; ``tick`` emits an event numbered by args["n"];
    ``burst`` emits args["n"] events in order.
    """

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def on_command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if name == "whoami":
            return {"pid": os.getpid(), "args": args}
        if name == "slow":
            from livestream.keys import key
            from livestream.redis import get_redis

            await get_redis().incr(key("test", "slow", self.user_id))
            await asyncio.sleep(float(args.get("seconds", 30)))
            return {"slept": True}
        if name == "crash":
            raise RuntimeError("Echo crashed on purpose")
        if name == "list":
            return [1, 2]  # type: ignore[return-value]
        if name == "refuse":
            raise CommandError("refused on purpose")
        if name == "tick":
            await self.emit("tick", {"n": args.get("n")})
            return {}
        if name == "burst":  # events 0..n-1 in order, each padded to about args["size"] bytes
            pad = "x" * int(args.get("size", 0))
            started = time.monotonic()
            for n in range(int(args.get("n", 10))):
                await self.emit("burst", {"n": n, "pad": pad})
            return {"sent": int(args.get("n", 10)), "seconds": time.monotonic() - started}
        return await super().on_command(name, args)


class ExternalAppender(Component):
    """An effect outside Redis: appends ``<unix time> <pid> <token>`` to the file
    TEST_EFFECTS_FILE every 20 ms, only while may_act(), and stops when the lease keeper
    says so (register_external_effect), as a relay process or a chat connection would."""

    async def run(self) -> None:
        import threading

        from livestream.ownership import history

        stopped = threading.Event()
        unregister = self.register_external_effect(stopped.set)
        path = os.environ["TEST_EFFECTS_FILE"]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while not stopped.is_set():
                if self.may_act():  # checked right before the act, no await in between
                    os.write(fd, f"{time.time():.6f} {os.getpid()} {self.token} {self.user_id}\n".encode())
                    history.record("effect", what="append", user=self.user_id, token=self.token)
                await asyncio.sleep(0.02)
        finally:
            unregister()
            os.close(fd)
