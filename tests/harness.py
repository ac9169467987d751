"""Real processes for end-to-end and fault tests: daphne, runworker, clients.

    stack = Stack(tmp_path, db_template, key_prefix, env={"LIVESTREAM_CLEANUP_TIMEOUT": "5"})
    web = stack.start_daphne()
    worker = stack.start_worker()
    session = await signup(web.url, "a@example.com", "pw...")
    ws = await open_socket(web.url, session)
    await worker.log.wait_for(r"UserStreamManager started: \\d+", timeout=5)
    ...
    stack.stop_all()

Every process logs to its own file under tmp_path; LogFile.wait_for polls the
file for a regex (an event to await, not a sleep). Nothing here touches the
machine's shared Redis: processes get the suite's REDIS_URL and a per-test
LIVESTREAM_KEY_PREFIX.
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

import httpx
import websockets

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
    without an application; see dashboard/shutdown.py) and one more line in its log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log.text()[-3000:]}")
        if f"Listening on TCP address 127.0.0.1:{port}" in proc.log.text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{proc.name} did not listen on {port} within {timeout}s")


def wait_port(port: int, proc: Proc, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited:\n{proc.log.text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{proc.name} did not listen on {port} within {timeout}s")


async def signup(base_url: str, email: str, password: str) -> str:
    """Sign up through allauth's form; returns the session cookie."""
    return await _auth_form(
        base_url, "/accounts/signup/", {"email": email, "password1": password, "password2": password}
    )


async def login(base_url: str, email: str, password: str) -> str:
    """Log in through allauth's form; returns the session cookie."""
    return await _auth_form(base_url, "/accounts/login/", {"login": email, "password": password})


async def _auth_form(base_url: str, path: str, data: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await client.get(path)
        data = {**data, "csrfmiddlewaretoken": client.cookies["csrftoken"]}
        response = await client.post(path, data=data, headers={"Referer": base_url + path})
        if response.status_code != 302 or "sessionid" not in client.cookies:
            raise AssertionError(f"{path} failed: {response.status_code}\n{response.text[:2000]}")
        return client.cookies["sessionid"]


async def open_socket(
    base_url: str,
    session: str | None,
    origin: str | None = None,
    path: str = "/ws/presence/",
    **connect_options: Any,
):
    """A real WebSocket to daphne with the session cookie and a same-origin Origin.

    ``connect_options`` go to websockets.connect (e.g. open_timeout under load).
    """
    headers = {"Origin": origin or base_url}
    if session:
        headers["Cookie"] = f"sessionid={session}"
    url = base_url.replace("http", "ws", 1) + path
    # Like a browser: no client-side pings, and pushes are buffered without limit so a
    # test that does not read them never stalls the transport (daphne's own pings
    # would then go unanswered and the socket would be dropped after ~40 s).
    connect_options = {"ping_interval": None, "max_queue": None, **connect_options}
    return await websockets.connect(url, additional_headers=headers, **connect_options)


# -- accounts without the sign-up form (fast enough for hundreds of users) -----

_ACCOUNTS_SCRIPT = """
import json, sys
import django
django.setup()
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore

User = get_user_model()
out = {}
for email in json.load(sys.stdin):
    user = User.objects.filter(email=email).first()
    if user is None:
        user = User(username=email[:150], email=email)
        user.set_unusable_password()
        user.save()
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    out[email] = [str(user.pk), session.session_key]
json.dump(out, sys.stdout)
"""


@dataclass(frozen=True)
class Account:
    email: str
    user_id: str
    session: str


def create_accounts(stack: Stack, emails: list[str]) -> dict[str, Account]:
    """Users with a logged-in session each, written straight to the stack's database.

    The sign-up form hashes a password per user (~0.3 s of CPU each); fault and
    soak tests need many users, not the form (other tests cover it).
    """
    import json

    result = subprocess.run(
        [PYTHON, "-c", _ACCOUNTS_SCRIPT],
        cwd=BASE_DIR,
        env=stack.process_env(),
        input=json.dumps(emails).encode(),
        capture_output=True,
        check=True,
    )
    rows = json.loads(result.stdout)
    return {email: Account(email, uid, session) for email, (uid, session) in rows.items()}


# -- what the workers' logs say ran, and when ----------------------------------

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (.*)$")
_MANAGER_EVENT = re.compile(r"\[PresenceManager\] UserStreamManager (started|stopped): (\S+)$")
_WORKER_STARTED = re.compile(r"\[PresenceManager\] worker (\S+) started")


def log_time(stamp: str, millis: str) -> float:
    """A log line's asctime as a Unix time.

    Django sets TZ to settings.TIME_ZONE in every process (the test process
    included, and subprocesses inherit it), so local time means the same here.
    """
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def timed_lines(proc: Proc) -> list[tuple[float, str]]:
    """(time, message) for every timestamped line of ``proc``'s log."""
    out = []
    for line in proc.log.lines():
        match = _LOG_LINE.match(line)
        if match:
            out.append((log_time(match[1], match[2]), match[3]))
    return out


@dataclass
class ManagerRun:
    """One UserStreamManager's life in one worker process, from its log lines."""

    worker: str
    user_id: str
    start: float
    end: float | None = None  # None: still running

    def covers(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


class RunTracker:
    """The managers workers ran, from their logs, read incrementally (for long runs).

    A killed worker's managers end when it died. A manager started twice in one
    process without a stop between counts as two runs (a duplicate too).
    """

    def __init__(self, workers: list[Proc]) -> None:
        self.workers = workers
        self.runs: list[ManagerRun] = []
        self._offsets: dict[str, int] = {}
        self._open: dict[str, dict[str, ManagerRun]] = {}

    def update(self) -> list[ManagerRun]:
        for proc in self.workers:
            open_runs = self._open.setdefault(proc.name, {})
            for t, message in self._new_lines(proc):
                event = _MANAGER_EVENT.search(message)
                if event is None:
                    continue
                kind, user_id = event[1], event[2]
                if kind == "started":
                    run = ManagerRun(proc.name, user_id, t)
                    self.runs.append(run)
                    open_runs.setdefault(user_id, run)
                elif user_id in open_runs:
                    open_runs.pop(user_id).end = t
            if not proc.alive() and proc.ended_at is not None:
                for run in open_runs.values():
                    run.end = proc.ended_at
                open_runs.clear()
        return self.runs

    def _new_lines(self, proc: Proc) -> list[tuple[float, str]]:
        offset = self._offsets.get(proc.name, 0)
        try:
            with proc.log.path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a half-written last line waits for the next read
        self._offsets[proc.name] = offset + len(complete)
        out = []
        for line in complete.decode(errors="replace").splitlines():
            match = _LOG_LINE.match(line)
            if match:
                out.append((log_time(match[1], match[2]), match[3]))
        return out


def manager_runs(workers: list[Proc]) -> list[ManagerRun]:
    """Every manager the workers ran (see RunTracker)."""
    return RunTracker(workers).update()


def running_at(runs: list[ManagerRun], t: float) -> dict[str, list[ManagerRun]]:
    """user id -> the runs live at time ``t``."""
    live: dict[str, list[ManagerRun]] = {}
    for run in runs:
        if run.covers(t):
            live.setdefault(run.user_id, []).append(run)
    return live


def overlapping_runs(runs: list[ManagerRun]) -> list[tuple[ManagerRun, ManagerRun]]:
    """Pairs of runs of one user that overlap in time: a manager running twice."""
    by_user: dict[str, list[ManagerRun]] = {}
    for run in runs:
        by_user.setdefault(run.user_id, []).append(run)
    pairs = []
    for user_runs in by_user.values():
        user_runs.sort(key=lambda r: r.start)
        for i, a in enumerate(user_runs):
            for b in user_runs[i + 1 :]:
                if a.end is None or b.start < a.end:
                    pairs.append((a, b))
    return pairs


def worker_id(proc: Proc) -> str | None:
    """The PresenceManager worker id ``proc`` logged at start (None before that)."""
    match = _WORKER_STARTED.search(proc.log.text())
    return match[1] if match else None


def log_problems(procs: list[Proc]) -> list[str]:
    """Lines that mean something went wrong unhandled: tracebacks and ERROR records."""
    problems = []
    for proc in procs:
        for line in proc.log.lines():
            if "Traceback (most recent call last)" in line or " ERROR " in line or " CRITICAL " in line:
                problems.append(f"{proc.name}: {line}")
    return problems


async def ping(ws, timeout: float = 5) -> None:
    """Send the dashboard's {"type": "ping"} and wait for its pong (skipping pushed messages)."""
    import json

    await ws.send(json.dumps({"type": "ping"}))
    async with asyncio.timeout(timeout):
        while json.loads(await ws.recv()).get("type") != "pong":
            pass
