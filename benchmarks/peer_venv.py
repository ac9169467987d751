"""The peer's own virtualenv under var/bench/, made once, never the project's .venv.

It gets the peer from PyPI plus the same Django / Channels / channels-redis /
redis-py versions as requirements.txt, so the comparison is of the two designs,
not of library versions.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.common import (
    BASE_DIR,
    VAR_DIR,
)

PEER = "django-channels-more-than-present==2.0.1"
SHARED = ("Django", "channels", "channels-redis", "redis")


def requirements() -> list[str]:
    pins = {}
    for line in (BASE_DIR / "requirements.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line.strip())
        if match:
            pins[match[1].lower()] = f"{match[1]}=={match[2]}"
    return [PEER, *(pins[name.lower()] for name in SHARED)]


def peer_python() -> Path:
    """The peer venv's python, creating and filling the venv if needed."""
    reqs = requirements()
    venv = VAR_DIR / "peer-venv"
    stamp = venv / f".installed-{hashlib.sha1(' '.join(reqs).encode()).hexdigest()[:12]}"
    python = venv / "bin" / "python"
    if stamp.exists() and python.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *reqs],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        raise RuntimeError(f"installing the peer failed:\n{install.stdout}\n{install.stderr}")
    stamp.touch()
    return python
