"""Garbage collection in the two long-running processes: daphne and the worker.

Python's defaults suit short scripts. In these processes two things go wrong:

* Everything loaded at start (Django, Twisted, autobahn, channels) lives for
  ever, yet every full collection walks it again: in daphne full collections were
  a large share of its CPU over a burst of connects (docs/benchmarks.md).
  ``gc.freeze()`` moves what exists once the process is up into a generation the
  collector never scans.
* The first threshold (700 allocations) is crossed many times a second, and
  objects that live a second or less (a worker's 10,000 pending ticks, a socket's
  handshake) are promoted to the oldest generation, which then fills and is
  collected over and over. A higher first threshold lets them die young.

``settle`` is called once per process, when it is up: the worker as it starts,
daphne at its first dashboard socket (by then everything is imported). A
collection that still holds the process up longer than PAUSE_LOGGED is logged.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

# A collection that holds the loop up longer than this is logged: it is the one
# stall no task can yield its way out of.
PAUSE_LOGGED = 0.1

_logger: logging.Logger | None = None
_started = 0.0


def settle(first_threshold: int, logger_name: str) -> None:
    """Freeze what the process has loaded, raise the first threshold, log long pauses. Once."""
    global _logger
    if _logger is not None:
        return
    _logger = logging.getLogger(logger_name)
    gc.collect()
    gc.freeze()
    gc.set_threshold(first_threshold, *gc.get_threshold()[1:])
    gc.callbacks.append(_time_collections)


def _time_collections(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    elif (took := time.perf_counter() - _started) > PAUSE_LOGGED and _logger is not None:
        _logger.warning(
            "garbage collection (generation %d) held the loop for %.0f ms", info["generation"], took * 1000
        )
