"""``runworker`` with livestream's hardened Worker (see livestream/worker.py).

livestream is listed before channels in INSTALLED_APPS, so this command
replaces Channels' own, the way daphne replaces runserver.
"""

import gc
import logging
import time
from typing import Any

from channels.management.commands.runworker import Command as ChannelsRunworker

from livestream.worker import Worker

# Python's default first GC threshold (700) is crossed many times a second by
# thousands of managers' ticks, which promotes each tick's still-pending sleep
# to the oldest generation; full collections of ~500,000 objects then ran every
# ~0.6 s and froze the event loop for 160-450 ms each (10,000 managers,
# docs/benchmarks.md). A higher first threshold lets those short-lived objects
# die young; the older generations keep their defaults.
GC_THRESHOLD0 = 100_000
# A collection that holds the loop up longer than this is logged: it is the one
# stall no task can yield its way out of.
GC_PAUSE_LOGGED = 0.1

logger = logging.getLogger("livestream.worker")
_gc_started = 0.0


def _time_collections(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    elif (took := time.perf_counter() - _gc_started) > GC_PAUSE_LOGGED:
        logger.warning(
            "garbage collection (generation %d) held the loop for %.0f ms", info["generation"], took * 1000
        )


class Command(ChannelsRunworker):
    worker_class = Worker

    def handle(self, *args, **options):
        gc.set_threshold(GC_THRESHOLD0, *gc.get_threshold()[1:])
        gc.callbacks.append(_time_collections)
        return super().handle(*args, **options)
