"""Run one benchmark module in this process and write its result as JSON.

    python -m benchmarks.<name> [--quick] [--out FILE]

``python -m benchmarks`` calls each module this way, in a fresh process, so
each gets a clean Django set-up, its own Redis and its own fd limit.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.common import (
    load_average,
    quick_mode,
    raise_fd_limit,
)


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def main_for(run: Callable[[bool], dict[str, Any]], argv: Sequence[str]) -> None:
    quick = quick_mode(argv)
    out = argv[argv.index("--out") + 1] if "--out" in argv else None
    # SIGTERM (a time limit) unwinds like an exception, so the finally blocks
    # stop daphne, the worker and redis-server instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    load_before = load_average()
    started = time.monotonic()
    result = run(quick)
    result.update(
        {
            "quick": quick,
            "seconds": round(time.monotonic() - started, 1),
            "load_before": load_before,
            "load_after": load_average(),
        }
    )
    text = json.dumps(clean(result), indent=2)
    if out:
        with open(out, "w") as f:
            f.write(text)
    else:
        print(text)
    sys.stdout.flush()
    os._exit(0)  # don't wait for stray client threads or sockets
