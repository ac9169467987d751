"""daphne's memory: its garbage collection, and memory given back after a burst of sockets closed.

At its first dashboard socket (``Trimmer.seen``; everything is imported by then)
daphne freezes what it has loaded and raises the first GC threshold to
GC_THRESHOLD0 (streampai/gcpolicy.py): with Python's defaults, collections were a
large share of daphne's CPU over a burst of connects (docs/benchmarks.md, "daphne:
garbage collection").

A burst (thousands of sockets of one script, a deploy's reconnect storm) leaves daphne
at its high-water mark: CPython and glibc keep freed memory for reuse, so RSS
stays near the peak long after the sockets are gone (docs/benchmarks.md). When the
open sockets fall well below their peak, ``Trimmer`` runs one full collection and
glibc's ``malloc_trim`` (which hands free heap pages back), at most once per
burst. Elsewhere (no glibc) it only collects.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging

from streampai.gcpolicy import settle

logger = logging.getLogger("dashboard.memory")

# Trim when at least this many sockets closed since the peak and at most half remain.
TRIM_AFTER = 500
# First GC threshold in daphne: the value that took GC's share of a burst of connects and
# closes down the most (the before/after numbers: docs/benchmarks.md).
GC_THRESHOLD0 = 50_000


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class Trimmer:
    def __init__(self) -> None:
        self.peak = 0
        self._running: asyncio.Task[None] | None = None

    def seen(self, open_now: int) -> None:
        """Called with the open socket count after each change."""
        settle(GC_THRESHOLD0, "dashboard.consumers")  # once per process
        if open_now > self.peak:
            self.peak = open_now
            return
        if self.peak - open_now >= TRIM_AFTER and open_now * 2 <= self.peak and self._running is None:
            self.peak = open_now
            self._running = asyncio.ensure_future(self._trim())

    async def _trim(self) -> None:
        try:
            await asyncio.sleep(1.0)  # let the closing sockets' last callbacks finish first
            gc.collect()
            await asyncio.to_thread(_malloc_trim)  # releases the GIL; can take a few ms
        except Exception as exc:  # never worth more than a line
            logger.debug("memory trim failed: %r", exc)
        finally:
            self._running = None
