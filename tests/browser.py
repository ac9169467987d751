"""Real headless Chromium for the browser tests: Debian's package driven by Playwright.

``playwright install`` cannot download browsers here, so the tests use the
system's /usr/bin/chromium. No test installs anything: ``make test`` runs
``make system-deps`` first (apt-get, when root); without Chromium the browser tests
are skipped with the reason, never passed silently.
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("STREAMPAI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-dev-shm-usage",
]


def ensure_chromium() -> str | None:
    """None when Chromium is there, else why the browser tests cannot run."""
    if CHROMIUM.exists():
        return None
    return f"{CHROMIUM} is missing: `make system-deps` installs it (as root), or set STREAMPAI_CHROMIUM"


if __name__ == "__main__":
    print(ensure_chromium() or f"{CHROMIUM} ready")
