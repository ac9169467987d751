"""Real processes for end-to-end and fault tests and the benchmarks: daphne, runworker.

    stack = Stack(tmp_path, db_template, key_prefix, env={"LIVESTREAM_CLEANUP_TIMEOUT": "5"})
    web = stack.start_daphne()
    worker = stack.start_worker()
    await worker.log.wait_for(r"UserStreamManager started: \\d+", timeout=5)
    ...
    stack.stop_all()

Every process logs to its own file under tmp_path; LogFile.wait_for polls the
file for a regex (an event to await, not a sleep). Nothing here touches the
machine's shared Redis: processes get the caller's REDIS_URL and a per-test (or
per-run) LIVESTREAM_KEY_PREFIX.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools import logs

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVESTREAM_")}
    env.update({"DJANGO_SETTINGS_MODULE": "streampai.settings", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def migrate_template(directory: Path) -> Path:
    path = directory / "template.sqlite3"
    env = base_env(DATABASE_URL=f"sqlite:///{path}")
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=BASE_DIR, env=env, check=True
    )
    return path


class LogFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def mark(self) -> int:
        """A position: wait_for(..., after=mark) only looks at what comes later."""
        return len(self.text())

    def findall(self, pattern: str, after: int = 0) -> list[re.Match[str]]:
        return list(re.finditer(pattern, self.text()[after:], re.MULTILINE))

    async def wait_for(self, pattern: str, timeout: float, after: int = 0, count: int = 1) -> re.Match[str]:
        """The ``count``-th match of ``pattern`` after ``after``; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            matches = self.findall(pattern, after)
            if len(matches) >= count:
                return matches[count - 1]
            if time.monotonic() > deadline:
                tail = "\n".join(self.lines()[-40:])
                raise AssertionError(
                    f"{pattern!r} x{count} not in {self.path.name} after {timeout}s:\n{tail}"
                )
            await asyncio.sleep(0.02)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: LogFile
    url: str = ""
    port: int = 0
    # time.time() when kill() or stop() returned: the end of everything the process ran.
    ended_at: float | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """kill -9, as a crash."""
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.ended_at = self.ended_at or time.time()

    def stop(self, timeout: float = 20) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()
        finally:
            self.ended_at = self.ended_at or time.time()


@dataclass
class Stack:
    """daphne and runworker processes sharing one database and one Redis namespace."""

    tmp_path: Path
    db_template: Path
    key_prefix: str
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db_path = self.tmp_path / "db.sqlite3"
        shutil.copy(self.db_template, self.db_path)

    def process_env(self, **extra: str) -> dict[str, str]:
        # self.env may name another DATABASE_URL (PostgreSQL, tests/test_postgres.py).
        return base_env(
            **{
                # Tests of the stream state alone go live without an RTMP input or outputs
                # (issue 18's rule); the broadcast tests set "1".
                "LIVESTREAM_BROADCAST_REQUIRED": "0",
                "DATABASE_URL": f"sqlite:///{self.db_path}",
                "LIVESTREAM_KEY_PREFIX": self.key_prefix,
                **self.env,
                **extra,
            }
        )

    def _spawn(self, name: str, args: list[str], **extra_env: str) -> Proc:
        path = self.tmp_path / f"{name}.log"
        with path.open("ab") as out:
            popen = subprocess.Popen(
                args,
                cwd=BASE_DIR,
                env=self.process_env(**extra_env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        proc = Proc(name, popen, LogFile(path))
        self.procs.append(proc)
        return proc

    def start_daphne(
        self,
        name: str = "daphne",
        port: int | None = None,
        app: str = "streampai.asgi:application",
        **extra_env: str,
    ) -> Proc:
        """A daphne on ``port`` (a free one by default; pass a dead daphne's port to restart it).

        ``app`` is the ASGI application to load (the benchmarks' floor apps, for one).
        """
        port = port or free_port()
        args = [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), app]
        proc = self._spawn(name, args, **extra_env)
        proc.port, proc.url = port, f"http://127.0.0.1:{port}"
        wait_listening(port, proc)
        return proc

    def start_worker(self, name: str = "worker", **extra_env: str) -> Proc:
        return self._spawn(name, [PYTHON, "manage.py", "runworker", "presence-manager"], **extra_env)

    def manage(self, *args: str, **extra_env: str) -> str:
        """Run a management command against the stack's database; returns its stdout."""
        done = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=BASE_DIR,
            env=self.process_env(**extra_env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        return done.stdout

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop(timeout=10)

    def logs(self) -> dict[str, str]:
        return {proc.name: proc.log.text() for proc in self.procs}


class TimedOut(AssertionError):
    """wait_until gave up."""


async def wait_until(
    predicate: Any, timeout: float, message: str = "condition", interval: float = 0.01, required: bool = True
) -> Any:
    """Poll an (async or sync) predicate until it is truthy and return its value.

    After ``timeout``: TimedOut if ``required``, else None (for callers that
    report what they saw instead of failing, such as the benchmarks).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or asyncio.isfuture(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            if required:
                raise TimedOut(f"timed out after {timeout}s waiting for {message}")
            return None
        await asyncio.sleep(interval)


def wait_listening(port: int, proc: Proc, timeout: float = 30) -> None:
    """Wait for daphne's "Listening on" line rather than probing the port.

    A probe would be one more connection daphne's shutdown trips over (an entry
    without an application; see dashboard/daphne/shutdown.py) and one more line in its log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log.text()[-3000:]}")
        if f"Listening on TCP address 127.0.0.1:{port}" in proc.log.text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{proc.name} did not listen on {port} within {timeout}s")


async def start_worker_ready(stack: Stack, name: str = "worker", timeout: float = 60, **env: str) -> Proc:
    """A runworker that has logged its start (its PresenceManager is running)."""
    worker = stack.start_worker(name, **env)
    await worker.log.wait_for(logs.WORKER_STARTED, timeout=timeout)
    return worker
