"""The log grammar (devtools/logs.py) reads the lines the worker's own log calls write.

Each worker event is a format in livestream/logformats.py used by the log call;
the readers' regexes are built from the same constants. Here a real logging
formatter (streampai/settings.py's) writes each event and the readers must get
its arguments back.
"""

from __future__ import annotations

import logging
import re

from devtools import logs
from livestream import logformats

PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s"  # settings.LOGGING's "plain"


def written(fmt: str, *args: object, name: str = logformats.WORKER_LOGGER) -> str:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, fmt, args, None)
    return logging.Formatter(PLAIN).format(record)


def test_every_worker_event_reads_back_its_arguments():
    cases = [
        (logformats.WORKER_STARTED, ("host:12:ab12cd",)),
        (logformats.WORKER_STOPPED, ("host:12:ab12cd",)),
        (logformats.MANAGER_STARTED, ("42",)),
        (logformats.MANAGER_STOPPED, ("42",)),
        (logformats.PRESENCE_JOIN, ("42",)),
        (logformats.PRESENCE_LEAVE, ("42", 3)),
        (logformats.CLEANUP_SCHEDULED, ("42", "5")),
        (logformats.FENCE, (2.25, 17)),
    ]
    for fmt, args in cases:
        match = re.search(logs.regex(fmt), written(fmt, *args))
        assert match is not None, fmt
        assert match.groups() == tuple(f"{a:.1f}" if isinstance(a, float) else str(a) for a in args)


def test_per_user_events_times_and_counts_from_a_real_line():
    text = "\n".join(
        [
            written(logformats.MANAGER_STARTED, "7"),
            written(logformats.CLEANUP_SCHEDULED, "7", "5"),
            written(logformats.MANAGER_STOPPED, "7"),
            written(logformats.MANAGER_STARTED, "7"),
        ]
    )
    assert logs.event_counts(text, logformats.MANAGER_STARTED) == {"7": 2}
    assert logs.event_counts(text, "UserStreamManager started") == {"7": 2}  # the benchmarks' first form
    assert set(logs.event_times(text, logformats.CLEANUP_SCHEDULED)) == {"7"}
    (t, message), *_ = logs.timed(text.splitlines())
    assert logs.MANAGER_STARTED_RE.search(message)[1] == "7" and t > 0


def test_console_lines_and_fences():
    line = written(logformats.CONSOLE_LOG, "9", 12, "2026-11-30 04:00:02.123456Z", name="livestream.console")
    assert logs.CONSOLE_LINE.search(line).groupdict() == {
        "uid": "9",
        "n": "12",
        "ts": "2026-11-30 04:00:02.123456",
    }
    assert logs.fences(written(logformats.FENCE, 2.0, 3)) == 1


def test_a_cleanup_shortened_by_its_wait_still_reads_in_5s(caplog):
    """daphne takes the time a close waited for its batched untrack off the cleanup delay
    (livestream/presence/store.py): the line keeps the seed's "in 5s" for a wait of microseconds,
    and says how much is left when the wait was long (an untrack retried through an outage)."""
    from livestream.worker import feed as events

    caplog.set_level(logging.INFO, logger=logformats.WORKER_LOGGER)
    leave = {"joins": {}, "leaves": {"7": {"metas": [{}]}}, "sessions": {"7": 0}}
    events.changes([{**leave, "cleanup": {"7": 4.99996}}, {**leave, "cleanup": {"7": 2.34}}])
    scheduled = [r.getMessage() for r in caplog.records if "cleanup scheduled" in r.getMessage()]
    assert scheduled == [
        "[PresenceManager] cleanup scheduled: 7 in 5s",
        "[PresenceManager] cleanup scheduled: 7 in 2.3s",
    ]
