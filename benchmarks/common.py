"""Plumbing shared by the benchmarks: Django set-up, stats, CPU/RSS sampling, tabs.

Processes, clients, users with sessions, the private Redis and the log grammar come
from devtools/ (shared with the tests; the benchmarks import them from there); this
module adds what only a benchmark needs:
percentiles, CPU/RSS sampling, many sockets at once, a tab that reconnects as
presence.js does. It is the benchmarks' toolbox, a section per kind of tool.
"""

from __future__ import annotations

import contextlib
import os
import resource
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devtools import processes
from devtools.clients import open_socket
from devtools.processes import Stack, migrate_template
from devtools.redis import private_redis, unix_url
from streampai.embedded_redis import EmbeddedRedis

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var" / "bench"


def quick_mode(argv: Sequence[str] = ()) -> bool:
    return "--quick" in argv or os.environ.get("BENCH_QUICK", "") not in ("", "0")


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- numbers ---------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# -- Redis and Django ----------------------------------------------------------------


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A temp dir for one benchmark; its process logs are kept under var/bench/logs/<name>/."""
    directory = Path(tempfile.mkdtemp(prefix=f"streampai-bench-{name}-"))
    try:
        yield directory
    finally:
        kept = VAR_DIR / "logs" / name
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir(parents=True, exist_ok=True)
        for log in directory.glob("*.log"):
            shutil.copy(log, kept / log.name)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def environment(
    name: str, tcp: bool = False, **livestream: Any
) -> Iterator[tuple[Path, Path, EmbeddedRedis]]:
    """What every benchmark starts with: ``(tmp, template, server)``: a work dir (its logs kept,
    see workdir), a private Redis (also on TCP if asked), a migrated database template, and
    this process's Django pointed at them (``livestream``: LIVESTREAM overrides)."""
    with workdir(name) as tmp, private_redis(tcp=tcp) as server:
        template = migrated_template(tmp)
        configure_django(unix_url(server), tmp / "db.sqlite3", new_prefix(), **livestream)
        yield tmp, template, server


def migrated_template(tmp: Path) -> Path:
    """A migrated SQLite file, for Stack to copy."""
    directory = tmp / "template"
    directory.mkdir(parents=True, exist_ok=True)
    return migrate_template(directory)


def configure_django(redis_url: str, db_path: Path, key_prefix: str, **livestream: Any) -> None:
    """Point this process (and the processes it starts) at our Redis and database.

    Production-like: DEBUG off. Must run before django.setup(): settings.py reads
    the environment when it is imported.
    """
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "streampai.settings",
            "REDIS_URL": redis_url,
            "DATABASE_URL": f"sqlite:///{db_path}",
            "DEBUG": "0",
            "SECRET_KEY": os.environ.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(40),
            "LIVESTREAM_KEY_PREFIX": key_prefix,
            **{f"LIVESTREAM_{k}": str(v) for k, v in livestream.items()},
        }
    )
    os.environ["BENCH_SECRET_KEY"] = os.environ["SECRET_KEY"]
    import django

    django.setup()


def new_prefix() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


# -- processes -------------------------------------------------------------------------


@dataclass
class CpuSample:
    wall: float
    cpu: float
    rss: int


def sample(pid: int) -> CpuSample:
    proc = psutil.Process(pid)
    times = proc.cpu_times()
    return CpuSample(time.monotonic(), times.user + times.system, proc.memory_info().rss)


def cpu_percent(before: CpuSample, after: CpuSample) -> float:
    """CPU used between two samples, in % of one core."""
    wall = after.wall - before.wall
    return 100.0 * (after.cpu - before.cpu) / wall if wall > 0 else float("nan")


def machine_info() -> dict[str, Any]:
    import platform
    import subprocess

    from streampai.embedded_redis import redis_server_binary

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    redis_version = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    version = next((w.split("=", 1)[1] for w in redis_version if w.startswith("v=")), "unknown")
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "redis": version,
        "os": platform.platform(),
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


# -- log parsing -------------------------------------------------------------------------


async def wait_until(
    predicate: Any, timeout: float, what: str, interval: float = 0.05, required: bool = True
) -> Any:
    """devtools' wait_until, polling every 50 ms; ``required=False`` returns None on timeout."""
    return await processes.wait_until(predicate, timeout, what, interval, required=required)


# -- real processes and sockets ------------------------------------------------------------


def new_stack(tmp: Path, template: Path, server: EmbeddedRedis, url: str | None = None, **env: str) -> Any:
    """A devtools Stack on a fresh copy of the database and our Redis.

    ``url``: how the processes reach Redis (default: its unix socket; pass
    ``server.url`` for TCP, so MONITOR and psutil can tell processes apart).

    The key prefix is this process's (configure_django), so in-process reads of
    Redis see what daphne and the worker write.
    """
    from django.db import connections

    connections.close_all()  # Stack copies the template over the database file
    return Stack(
        tmp,
        template,
        os.environ["LIVESTREAM_KEY_PREFIX"],
        env={"REDIS_URL": url or unix_url(server), **LOAD_GENERATOR_LIMITS, **env},
    )


# Every benchmark socket comes from 127.0.0.1, and some benchmarks open thousands for
# one user: the abuse limits (per-IP handshakes, sockets per user; README "Limits"),
# meant for one misbehaving client among many, would refuse the load generator
# itself. Real tabs come from their users' own addresses.
LOAD_GENERATOR_LIMITS = {"LIVESTREAM_HANDSHAKE_RATE": "0", "LIVESTREAM_MAX_SOCKETS_PER_USER": "100000"}


FAILURES: Counter[str] = Counter()  # why handshakes failed, for the report


def take_failures() -> dict[str, int]:
    """Why handshakes failed in this run (and forget it for the next)."""
    failures = dict(FAILURES)
    FAILURES.clear()
    return failures


async def open_all(
    url: str, sessions: Sequence[str], concurrency: int, path: str = "/ws/presence/"
) -> list[tuple[Any, float] | None]:
    """Open one socket per session, at most ``concurrency`` handshakes at a time.

    Returns, in the order of ``sessions``, (socket, time.time() its handshake
    completed), or None where the handshake failed (counted in FAILURES).
    """
    import asyncio

    gate = asyncio.Semaphore(concurrency)

    async def one(session: str) -> tuple[Any, float] | None:
        async with gate:
            try:
                ws = await open_socket(url, session, path=path, open_timeout=180, close_timeout=30)
            except Exception as exc:
                FAILURES[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                return None
            return ws, time.time()

    return list(await asyncio.gather(*(one(s) for s in sessions)))


async def close_all(sockets: Sequence[Any], concurrency: int | None = None) -> None:
    """Close the sockets, all at once or at most ``concurrency`` closing handshakes at a time."""
    import asyncio

    gate = asyncio.Semaphore(concurrency or max(1, len(sockets)))

    async def one(ws: Any) -> None:
        async with gate:
            await ws.close()

    await asyncio.gather(*(one(ws) for ws in sockets), return_exceptions=True)


async def quiet(pid: int, timeout: float = 15.0, step: float = 0.3, below: float = 5.0) -> float:
    """Wait until process ``pid`` uses less than ``below`` % of a core over ``step`` s; returns the wait."""
    import asyncio

    started = time.monotonic()
    last = sample(pid)
    while time.monotonic() - started < timeout:
        await asyncio.sleep(step)
        now = sample(pid)
        if cpu_percent(last, now) < below:
            break
        last = now
    return time.monotonic() - started


# -- the page's reconnect rule and a tab that follows it ---------------------------------------

SESSION_ENDED = 4001  # presence.js: the page reloads instead of reconnecting


@dataclass
class TabEvent:
    at: float  # time.time()
    kind: str  # "open", "close" (code in detail) or "refused" (why in detail)
    detail: str = ""


class PageTab:
    """One dashboard tab's socket: open, read pushes, reconnect as presence.js does.

    ``url()`` is asked before every attempt (a load balancer's current target).
    The first attempt may wait on ``first_gate`` (so a benchmark can open its
    thousands of tabs at a rate daphne accepts); reconnects never wait on it.
    """

    def __init__(
        self, session: str, url: Any, live: bool = True, seed: int = 0, first_gate: Any = None
    ) -> None:
        import random

        self.session = session
        self.url = url
        self.path = "/ws/presence/?live=1" if live else "/ws/presence/"
        self.rng = random.Random(seed)
        self.first_gate = first_gate
        self.events: list[TabEvent] = []
        self.received = 0  # pushes read (not parsed: thousands of tabs share this process's CPU)
        self.ws: Any = None
        self.stopping = False
        self.task: Any = None

    def start(self) -> PageTab:
        import asyncio

        self.task = asyncio.create_task(self._run())
        return self

    def opens(self, after: float = 0.0) -> list[float]:
        return [e.at for e in self.events if e.kind == "open" and e.at >= after]

    def is_open(self) -> bool:
        return self.ws is not None and self.ws.state.name == "OPEN"

    async def _connect(self) -> Any:
        return await open_socket(self.url(), self.session, path=self.path, open_timeout=60, close_timeout=10)

    async def _run(self) -> None:
        import asyncio

        from tests.reconnect_policy import ReconnectPolicy  # presence.js's rule, written once

        policy = ReconnectPolicy(self.rng)
        first = True
        while not self.stopping:
            code: int | None = None
            try:
                if first and self.first_gate is not None:
                    async with self.first_gate:
                        self.ws = await self._connect()
                else:
                    self.ws = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.events.append(TabEvent(time.time(), "refused", refusal_kind(exc)))
            else:
                policy.opened()
                self.events.append(TabEvent(time.time(), "open"))
                try:
                    async for _raw in self.ws:
                        self.received += 1
                except Exception:  # ConnectionClosedError: no close frame
                    pass
                code = self.ws.close_code
                self.events.append(TabEvent(time.time(), "close", str(code)))
                if code == SESSION_ENDED:
                    return
            first = False
            if self.stopping:
                return
            wait = policy.next_wait(code, self.ws.close_reason if self.ws is not None else None)
            if wait is None:  # 4001 / 4003: the page reloads or stops
                return
            await asyncio.sleep(wait)

    async def close(self) -> float:
        """The page's ``pagehide``: no reconnect; returns time.time() just before the close frame."""
        import asyncio

        self.stopping = True
        at = time.time()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        return at


def refusal_kind(exc: BaseException) -> str:
    """A failed handshake, by kind: 'HTTP 403', 'connection refused', 'timeout', ..."""
    response = getattr(exc, "response", None)
    if response is not None and getattr(response, "status_code", None):
        return f"HTTP {response.status_code}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return type(exc).__name__


# -- simulated joins (what daphne does on connect, without a socket) ---------------------------


async def announce_join(user_id: str, meta: dict[str, Any], store: Any = None) -> None:
    """Track one connection, as PresenceConsumer.connect does: the track script also
    announces the join to the workers (livestream/presence/store.py).

    The only place the benchmarks call the presence API for simulated joins.
    """
    from livestream.presence.store import PresenceStore

    await (store or PresenceStore()).track(user_id, meta)


def fake_meta(ref: str) -> dict[str, Any]:
    return {"email": f"{ref}@example.com", "joined_at": int(time.time()), "ref": ref}


# -- pairing events per user without KeyErrors ----------------------------------------------------


def paired(ends: dict[str, float], starts: dict[str, float], users: Any) -> tuple[list[float], list[str]]:
    """``ends[u] - starts[u]`` for every user that has both; and the users missing either.

    Never raises: a user the benchmark could not measure is reported, not a crash.
    """
    values, missing = [], []
    for u in users:
        if u in ends and u in starts:
            values.append(ends[u] - starts[u])
        else:
            missing.append(u)
    return values, missing


def ms(stats: dict[str, float], *keys: str) -> str:
    """'12.3 / 45.6' from a summary() in seconds, in ms; 'n/a' when nothing was measured."""
    if not stats.get("n"):
        return "n/a"
    return " / ".join(f"{stats[k] * 1000:.0f}" for k in keys)


# -- Redis as seen from outside ---------------------------------------------------------------------


def commandstats(url: str) -> dict[str, int]:
    """INFO commandstats: command -> calls (commands run by Lua scripts included)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def redis_connections(pid: int, redis_port: int) -> int:
    """How many TCP connections process ``pid`` has open to Redis on ``redis_port``."""
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return -1
    return sum(1 for c in conns if c.raddr and c.raddr.port == redis_port and c.status == "ESTABLISHED")
