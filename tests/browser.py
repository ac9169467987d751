"""Real headless Chromium for the browser tests: Debian's package driven by Playwright.

``playwright install`` cannot download browsers here, so the tests use the
system's /usr/bin/chromium and install it with apt when it is missing and we
are root. Anything else that stops it is a skip with the reason, never a
silent pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path(os.environ.get("STREAMPAI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
]
APT_TIMEOUT = 900.0


def ensure_chromium() -> str | None:
    """Install Chromium if needed; return None when usable, else why not."""
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and this machine has no apt-get to install it"
    if os.geteuid() != 0:
        return f"{CHROMIUM} is missing and installing it needs root (apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(command)}` failed: {exc}"
        if done.returncode != 0:
            return f"`{' '.join(command)}` exited {done.returncode}: {done.stderr.strip()[-500:]}"
    return None if CHROMIUM.exists() else f"apt-get installed chromium but {CHROMIUM} is still missing"


if __name__ == "__main__":
    print(ensure_chromium() or f"{CHROMIUM} ready")
