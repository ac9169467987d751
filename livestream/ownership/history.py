"""A history of manager runs and effects, for the checker of a fault run (devtools/nemesis.py).

Off unless STREAMPAI_HISTORY_DIR is set: then each process appends one JSON object per
line to ``<dir>/<pid>.jsonl`` (one ``os.write`` of an O_APPEND file each: a line is never
torn, and a kill -9 loses at most the line being written):

  {"kind": "run", "event": "start" | "stop", "user": "7", "worker": "...", "token": 17..., "t": <unix s>}
  {"kind": "effect", "what": "...", "user": "7", "token": 17..., "t": <unix s>, ...}

``t`` is the wall clock of the machine, which every process of a test run shares.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

_fd: int | None = None
_pid: int | None = None
_DIR = os.environ.get("STREAMPAI_HISTORY_DIR", "")


def enabled() -> bool:
    return bool(_DIR)


def record(kind: str, **fields: Any) -> None:
    """Append one entry (no-op when the history is off)."""
    global _fd, _pid
    directory = _DIR
    if not directory:
        return
    if _fd is None or _pid != os.getpid():
        _pid = os.getpid()
        _fd = os.open(os.path.join(directory, f"{_pid}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = json.dumps({"kind": kind, "t": time.time(), "pid": _pid, **fields}, separators=(",", ":"))
    os.write(_fd, (line + "\n").encode())


def read(directory: str) -> list[dict[str, Any]]:
    """Every entry of every process, in time order."""
    entries: list[dict[str, Any]] = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jsonl"):
            with open(os.path.join(directory, name)) as f:
                entries.extend(json.loads(line) for line in f if line.endswith("\n"))
    return sorted(entries, key=lambda e: e["t"])
