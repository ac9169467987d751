"""Reading the worker's log: one grammar, built from the formats its log calls use.

Each process logs ``<asctime> <LEVEL> <logger> <message>`` (streampai/settings.py's
``plain`` formatter), asctime in local time with milliseconds. The messages' formats
are livestream/logformats.py's constants; ``regex`` turns one into a pattern whose
groups are its arguments, so a reader here cannot drift from what the worker writes:

    MANAGER_STARTED_RE.search("[PresenceManager] UserStreamManager started: 7")[1] == "7"
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from livestream import logformats


class Log(Protocol):
    path: Path

    def text(self) -> str: ...
    def lines(self) -> list[str]: ...


class Proc(Protocol):
    """What reading a process's log needs of it (devtools.processes.Proc)."""

    name: str
    log: Log
    ended_at: float | None

    def alive(self) -> bool: ...


# What each printf conversion the formats use may match.
_CONVERSIONS = {"%s": r"(\S+)", "%d": r"(\d+)", "%.1f": r"([\d.]+)", "%r": r"(.+)"}
_CONVERSION = re.compile("|".join(re.escape(c) for c in _CONVERSIONS))


def regex(fmt: str, *names: str) -> str:
    """A regex source for the message ``fmt`` (a logformats constant): literal text escaped,
    each conversion a group, named by ``names`` in order if given (else numbered)."""
    parts, last, index = [], 0, 0
    for match in _CONVERSION.finditer(fmt):
        parts.append(re.escape(fmt[last : match.start()]))
        group = _CONVERSIONS[match[0]]
        if index < len(names):
            group = f"(?P<{names[index]}>{group[1:]}"
        parts.append(group)
        last, index = match.end(), index + 1
    parts.append(re.escape(fmt[last:]))
    return "".join(parts)


ASCTIME = r"(?P<asctime>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (.*)$")

WORKER_STARTED = regex(logformats.WORKER_STARTED)
MANAGER_STARTED_RE = re.compile(regex(logformats.MANAGER_STARTED) + "$")
MANAGER_STOPPED_RE = re.compile(regex(logformats.MANAGER_STOPPED) + "$")
FENCE_LINE = re.compile(regex(logformats.FENCE))
CONSOLE_LINE = re.compile(
    regex(logformats.CONSOLE_LOG.removesuffix("%s"), "uid", "n")
    + r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6})Z"
)
# daphne's, not ours: a consumer still running application_close_timeout after its socket closed.
KILLED_LINE = "took too long to shut down and was killed"


# -- time --------------------------------------------------------------------------


def log_time(stamp: str, millis: str) -> float:
    """A log line's asctime as a Unix time.

    Django sets TZ to settings.TIME_ZONE in every process (the test process
    included, and subprocesses inherit it), so local time means the same here.
    """
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def asctime_epoch(asctime: str) -> float:
    """logging's %(asctime)s (local time, millisecond resolution) as epoch seconds."""
    stamp, _, millis = asctime.partition(",")
    return log_time(stamp, millis)


def utc_epoch(stamp: str) -> float:
    """The ConsoleLogger's ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC, microseconds) as epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()


def timed(lines: list[str]) -> list[tuple[float, str]]:
    """(time, message) for every timestamped line."""
    out = []
    for line in lines:
        match = LOG_LINE.match(line)
        if match:
            out.append((log_time(match[1], match[2]), match[3]))
    return out


def timed_lines(proc: Proc) -> list[tuple[float, str]]:
    """(time, message) for every timestamped line of ``proc``'s log."""
    return timed(proc.log.lines())


# -- events per user -----------------------------------------------------------------


def _per_user(event: str) -> re.Pattern[str]:
    """A worker event about one user (its first argument), with the uid named: a logformats
    constant, or (as the benchmarks first wrote them) the text between "[PresenceManager] "
    and ": <uid>", such as "UserStreamManager started"."""
    fmt = event if "%" in event else f"[PresenceManager] {event}: %s"
    return re.compile(regex(fmt, "uid"))


def event_times(text: str, event: str) -> dict[str, float]:
    """uid -> epoch of the first line of ``event`` (e.g. logformats.MANAGER_STARTED) per user."""
    pattern = re.compile(ASCTIME + r" \S+ \S+ " + _per_user(event).pattern)
    times: dict[str, float] = {}
    for match in pattern.finditer(text):
        times.setdefault(match["uid"], asctime_epoch(match["asctime"]))
    return times


def event_counts(text: str, event: str) -> Counter[str]:
    """uid -> how many lines of ``event`` ``text`` has."""
    return Counter(match["uid"] for match in _per_user(event).finditer(text))


def fences(text: str) -> int:
    return len(FENCE_LINE.findall(text))


def killed(text: str) -> int:
    """daphne's 'took too long to shut down and was killed' lines."""
    return text.count(KILLED_LINE)


def wsrejects(text: str) -> int:
    """daphne's access-log lines for refused handshakes."""
    return text.count("WSREJECT")


def worker_id(proc: Proc) -> str | None:
    """The PresenceManager worker id ``proc`` logged at start (None before that)."""
    match = re.search(WORKER_STARTED, proc.log.text())
    return match[1] if match else None


def log_problems(procs: list[Proc]) -> list[str]:
    """Lines that mean something went wrong unhandled: tracebacks and ERROR records."""
    problems = []
    for proc in procs:
        for line in proc.log.lines():
            if "Traceback (most recent call last)" in line or " ERROR " in line or " CRITICAL " in line:
                problems.append(f"{proc.name}: {line}")
    return problems


# -- which managers ran, where and when -------------------------------------------------


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
                if started := MANAGER_STARTED_RE.search(message):
                    run = ManagerRun(proc.name, started[1], t)
                    self.runs.append(run)
                    open_runs.setdefault(started[1], run)
                elif (stopped := MANAGER_STOPPED_RE.search(message)) and stopped[1] in open_runs:
                    open_runs.pop(stopped[1]).end = t
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
        return timed(complete.decode(errors="replace").splitlines())


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
