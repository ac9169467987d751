"""Garbage collection in daphne and the worker (streampai/gcpolicy.py), in a process of its own."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from django.conf import settings

SCRIPT = textwrap.dedent(
    """
    import gc, logging, sys, time
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s %(message)s")
    from streampai import gcpolicy
    loaded = [[] for _ in range(50_000)]  # tracked by the collector
    gcpolicy.settle(50_000, "dashboard.consumers")
    gcpolicy.settle(10, "elsewhere")  # only the first call counts
    print("frozen", gc.get_freeze_count() >= 50_000, "threshold", gc.get_threshold()[0])
    gcpolicy.PAUSE_LOGGED = 0.0  # every collection is 'long' now
    gc.collect()
    """
)


def test_settle_freezes_what_is_loaded_raises_the_threshold_and_logs_long_pauses():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "frozen True threshold 50000", lines
    assert lines[1].startswith("dashboard.consumers garbage collection (generation 2) held the loop for"), (
        lines
    )
