"""A Channels worker that survives what stops the stock one.

Channels' Worker ends ``runworker`` when a message has no ``type`` or when the
channel layer raises (Redis restarting, redis-py timeouts), and it only creates
the application when the first message arrives. This one:

  * logs and drops messages without a type;
  * retries the channel layer with backoff instead of exiting;
  * creates each channel's application at start and sends it
    ``{"type": "worker.startup"}``, so the PresenceManager starts managers for
    users already present without waiting for a message;
  * on SIGTERM/SIGINT stops listening, sends ``{"type": "worker.shutdown"}``
    and waits (bounded) for the application to finish;
  * tunes garbage collection for thousands of managers (streampai/gcpolicy.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from channels.worker import Worker as ChannelsWorker

from livestream.tasks import Backoff, cancel_and_wait, describe
from streampai.gcpolicy import settle

logger = logging.getLogger("livestream.worker")

SHUTDOWN_TIMEOUT = 15.0
# After shutdown, how long tasks still running get to end once cancelled.
ABANDON_TIMEOUT = 1.0
# Python's default first GC threshold (700) is crossed many times a second by
# thousands of managers' ticks, which promotes each tick's still-pending sleep
# to the oldest generation, and frequent full collections then froze the event
# loop (measured: docs/benchmarks.md, worker capacity). A higher first threshold
# lets those short-lived objects die young (the older generations keep their defaults).
GC_THRESHOLD0 = 100_000


class Worker(ChannelsWorker):
    def __init__(self, *args, install_signal_handlers: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.install_signal_handlers = install_signal_handlers
        self._stop: asyncio.Event | None = None

    def run(self) -> None:
        """asyncio.run(self.arun()), minus its wait for every last task at exit.

        asyncio.run cancels the tasks still running and waits for all of them: a
        component that ignores cancellation (abandoned after SHUTDOWN_TIMEOUT by
        its supervisor) would keep a SIGTERMed worker alive until SIGKILL.
        """
        settle(GC_THRESHOLD0, "livestream.worker")  # the application is loaded by now
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self.arun())
        leftovers = list(asyncio.all_tasks(loop))
        stuck = loop.run_until_complete(cancel_and_wait(leftovers, ABANDON_TIMEOUT))
        if stuck:
            logger.error(
                "Worker exiting with %d task(s) that ignore cancellation: %s", len(stuck), describe(stuck)
            )
        # Not loop.close(): with tasks still pending it would only add warnings. The process ends here.

    def request_stop(self) -> None:
        """What SIGTERM does (tests run the worker in-process and call this)."""
        if self._stop is not None:
            self._stop.set()

    async def handle(self) -> None:
        self._stop = stop = asyncio.Event()
        if self.install_signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        for channel in self.channels:
            self._instance(channel).put_nowait({"type": "worker.startup"})
        listeners = [asyncio.create_task(self.listener(channel)) for channel in self.channels]
        await stop.wait()
        logger.info("Worker shutting down")
        # Bounded: redis-py can lose a cancellation that lands mid-command, and the
        # listener then checks the stop flag at its next turn instead.
        await cancel_and_wait(listeners, timeout=2.0)
        futures = []
        for channel in self.channels:
            self._instance(channel).put_nowait({"type": "worker.shutdown"})
            futures.append(self.application_instances[channel]["future"])
        _done, pending = await asyncio.wait(futures, timeout=SHUTDOWN_TIMEOUT)
        if pending:
            stuck = [t for t in asyncio.all_tasks() if not t.done() and t is not asyncio.current_task()]
            logger.error(
                "Worker applications did not stop within %ss; still running: %s",
                SHUTDOWN_TIMEOUT,
                describe(stuck),
            )

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _instance(self, channel: str) -> asyncio.Queue:
        return self.get_or_create_application_instance(channel, {"type": "channel", "channel": channel})

    async def listener(self, channel: str) -> None:
        backoff = Backoff()
        while not self._stopping():
            try:
                message = await self.channel_layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.failed()
                logger.warning("Receiving on %s failed (%r); retrying in %.1fs", channel, exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if self._stopping():
                logger.warning("Worker stopping: message of type %r left undelivered", message.get("type"))
                return
            if not isinstance(message, dict) or not message.get("type"):
                logger.warning("Dropped a message without a type on %s: %.200r", channel, message)
                continue
            await self._instance(channel).put(message)
