"""py-spy for the benchmarks: sample a running process, summarise where it spends time.

    BENCH_PROFILE=1 python -m benchmarks.worker_capacity

records the worker during the measurement window (collapsed stacks under
var/bench/profiles/) and prints the functions with the most inclusive and
self time. It is how the fixes in docs/benchmarks.md were found.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.common import (
    VAR_DIR,
)


def enabled() -> bool:
    return os.environ.get("BENCH_PROFILE", "") not in ("", "0")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: pip install -r requirements.txt")
    return found


def record(pid: int, seconds: float, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start sampling ``pid`` for ``seconds`` (100 Hz, without pausing it)."""
    out = VAR_DIR / "profiles" / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [py_spy(), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100", "--nonblocking"]
    args += ["-f", "raw", "-o", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def summarise(path: Path, top: int = 25) -> str:
    """The functions with the most inclusive and self samples in a collapsed-stack file."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    if not total:
        return "no samples"
    lines = [f"{total} samples; inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    lines.append("self:")
    lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)
