"""`make bench`: run every benchmark in its own process, then write the report.

    python -m benchmarks [--quick] [--only presence_cost,worker_capacity]

Each benchmark module runs as ``python -m benchmarks.<name> --out FILE`` with a
time limit; a benchmark that fails or overruns is reported as such and the
others still run. The results go to docs/benchmarks.json and
docs/benchmarks.md (the latter also gets benchmarks/FINDINGS.md, the
profiling notes). Exit status 1 if any benchmark failed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from benchmarks.common import (
    BASE_DIR,
    load_average,
    machine_info,
    quick_mode,
    raise_fd_limit,
)
from benchmarks.report import write_report

# name, time limit (s) of a full run
BENCHMARKS = [
    ("presence_cost", 150),
    ("join_to_running", 150),
    ("cleanup_precision", 90),
    ("worker_capacity", 330),
    ("daphne_connections", 360),
    ("join_close_burst", 150),
    ("reconnect_storm", 600),
    ("join_flood", 240),
    ("one_user_burst", 600),
    ("placement", 120),
    ("components", 300),
    ("webhook_flood", 240),
    ("platform_chat", 600),
    ("broadcast", 600),
]


def stop_tree(proc: subprocess.Popen[str]) -> None:
    """End a benchmark process that overran, and everything it started.

    SIGTERM first (it stops its own daphne, worker and redis-server, see
    runner.py), then SIGKILL for whatever is left of the tree.
    """
    try:
        tree = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.Error:
        tree = []
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    for member in tree:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(tree, timeout=10)


def run_one(name: str, limit: float, quick: bool) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = Path(out.name)
    args = [sys.executable, "-m", f"benchmarks.{name}", "--out", str(path), *(["--quick"] if quick else [])]
    print(f"== {name} (load {load_average()})", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        stop_tree(proc)
        output, _ = proc.communicate()
        return {"name": name, "error": f"did not finish within {limit:.0f}s", "log": output[-3000:]}
    elapsed = time.monotonic() - started
    if proc.returncode != 0 or not path.exists() or not path.stat().st_size:
        return {"name": name, "error": f"exited with {proc.returncode}", "log": output[-3000:]}
    result = json.loads(path.read_text())
    path.unlink()
    result["name"] = name
    print(f"   {result.get('headline', '')} [{elapsed:.0f}s]", flush=True)
    return result


def main(argv: list[str]) -> int:
    quick = quick_mode(argv)
    only = set(argv[argv.index("--only") + 1].split(",")) if "--only" in argv else None
    raise_fd_limit()
    started = time.monotonic()
    machine = machine_info()
    when = datetime.now(UTC)
    results = []
    for name, limit in BENCHMARKS:
        if only and name not in only:
            continue
        results.append(run_one(name, limit * (2 if quick else 1), quick))
    total = time.monotonic() - started
    report = {
        "date": when.isoformat(timespec="seconds"),
        "quick": quick,
        "total_seconds": round(total, 1),
        "machine": machine,
        "load_average_at_end": load_average(),
        "benchmarks": results,
    }
    md, js = write_report(report, partial=bool(only))
    print(f"wrote {md} and {js} in {total:.0f}s", flush=True)
    failed = [r["name"] for r in results if "error" in r]
    if failed:
        for r in results:
            if "error" in r:
                print(f"-- {r['name']} failed: {r['error']}\n{r['log']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
