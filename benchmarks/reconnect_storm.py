"""7. Reconnect storm (rolling deploy): daphne A stops, every tab reconnects to daphne B.

N tabs of N distinct users, opened as the page opens them (``?live=1``), are
connected to daphne A; a worker runs their managers. daphne B starts and the
"load balancer" (the URL the tabs reconnect to) switches to it; A gets SIGTERM.
Every tab reconnects with the page's policy (tests/reconnect_policy.py, which
mirrors presence.js). Reported:

* per tab: SIGTERM -> open again on B, and its own close -> open again
  (p50 / p99 / max), and SIGTERM -> the last tab back;
* handshakes refused during the storm, by kind (HTTP status, connection
  refused, timeout), plus daphne's WSREJECT access-log lines;
* managers of these users stopped or started again from SIGTERM to
  CLEANUP_TIMEOUT + 3 s after the last tab is back (worker log), fence lines,
  and daphne A's "took too long to shut down and was killed" lines;
* the benchmark process' CPU (the clients), to show it was not the bottleneck.

Targets: all back within 5 s, not one handshake refused, no manager stopped or
restarted.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

from benchmarks.common import (
    PageTab,
    cpu_percent,
    environment,
    new_stack,
    sample,
    summary,
    wait_until,
)
from devtools.clients import amake_users
from devtools.logs import event_counts, fences, killed, wsrejects
from devtools.processes import start_worker_ready
from devtools.redis import flushall
from livestream import logformats

BACK_WITHIN = 5.0
BACK_WAIT = 60.0  # how long after SIGTERM the tabs are given to come back (and A to exit)
CLEANUP_TIMEOUT = 5.0
OPEN_CONCURRENCY = 100  # the initial connects (not measured) go in at a rate daphne accepts


async def storm(tmp: Any, template: Any, server: Any, n: int, offset: int) -> dict[str, Any]:
    stack = new_stack(tmp, template, server)
    users = await amake_users(n, start=offset)
    uids = [uid for uid, _ in users]
    tabs: list[PageTab] = []
    result: dict[str, Any] = {"tabs": n}
    try:
        web_a = stack.start_daphne(f"daphne-a-{n}")
        worker = await start_worker_ready(stack, f"worker-{n}")
        target = [web_a.url]
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        tabs = [
            PageTab(session, lambda: target[0], live=True, seed=i, first_gate=gate).start()
            for i, (_, session) in enumerate(users)
        ]
        result["initially_open"] = bool(
            await wait_until(
                lambda: all(t.opens() for t in tabs),
                timeout=120,
                what="tabs open",
                interval=0.2,
                required=False,
            )
        )

        def started_all() -> bool:
            return set(uids) <= event_counts(worker.log.text(), logformats.MANAGER_STARTED).keys()

        await wait_until(started_all, timeout=120, what="managers started", interval=0.5, required=False)
        await asyncio.sleep(2.0)
        result["open_before"] = sum(t.is_open() for t in tabs)
        web_b = stack.start_daphne(f"daphne-b-{n}")
        target[0] = web_b.url  # the load balancer now sends new connections to B
        mark, a_mark = worker.log.mark(), web_a.log.mark()
        me0 = sample(os.getpid())
        t_term = time.time()
        web_a.signal(signal.SIGTERM)

        def exit_time() -> float:
            web_a.popen.wait(BACK_WAIT)  # TimeoutExpired if A is still running then
            return time.time()

        a_exit = asyncio.ensure_future(asyncio.to_thread(exit_time))

        def all_back() -> bool:
            return all(t.opens(after=t_term) for t in tabs)

        await wait_until(all_back, timeout=BACK_WAIT, what="tabs back", interval=0.05, required=False)
        t_back = time.time()
        me1 = sample(os.getpid())
        try:
            result["a_exit_s"] = await a_exit - t_term
        except Exception:  # still running BACK_WAIT s after SIGTERM: stop_all kills it
            result["a_exit_s"] = float("nan")
        # Any cleanup the storm scheduled would fire within CLEANUP_TIMEOUT of the last tab back.
        await asyncio.sleep(CLEANUP_TIMEOUT + 3.0)
        text = worker.log.text()[mark:]
        a_text, b_text = web_a.log.text()[a_mark:], web_b.log.text()
    finally:
        await asyncio.gather(*(t.close() for t in tabs), return_exceptions=True)
        stack.stop_all()
        flushall(server)
    wanted = set(uids)
    back, own = [], []
    refusals: Counter[str] = Counter()
    close_codes: Counter[str] = Counter()
    for tab in tabs:
        reopened = tab.opens(after=t_term)
        until = reopened[0] if reopened else t_back
        storm_events = [e for e in tab.events if t_term - 1 <= e.at <= until]
        closes = [e for e in storm_events if e.kind == "close"]
        if reopened and reopened[0] <= t_back:
            back.append(reopened[0] - t_term)
            if closes:
                own.append(reopened[0] - closes[0].at)
        if closes:
            close_codes[closes[0].detail] += 1
        refusals.update(e.detail for e in storm_events if e.kind == "refused")
    stopped = event_counts(text, logformats.MANAGER_STOPPED)
    started = event_counts(text, logformats.MANAGER_STARTED)
    result.update(
        {
            "sigterm_to_back_s": summary(back),
            "close_to_back_s": summary(own),
            "not_back": n - len(back),
            "all_back_s": max(back) if len(back) == n else float("nan"),
            "back_within_target": sum(b <= BACK_WITHIN for b in back),
            "refused": dict(refusals),
            "refused_total": sum(refusals.values()),
            "close_codes_seen": dict(close_codes),
            "wsreject_lines": wsrejects(a_text) + wsrejects(b_text),
            "managers_stopped": sum(v for u, v in stopped.items() if u in wanted),
            "managers_started": sum(v for u, v in started.items() if u in wanted),
            "users_stopped": sum(1 for u in stopped if u in wanted),
            "fences": fences(text),
            "killed_on_shutdown": killed(a_text),
            "killed_on_b": killed(b_text),
            # daphne's own warning when a socket's presence could not be ended (a ghost until PRESENCE_TTL)
            "not_untracked_lines": a_text.count("not untracked") + b_text.count("not untracked"),
            "client_cpu_percent": cpu_percent(me0, me1),
            "storm_s": t_back - t_term,
        }
    )
    return result


def run(quick: bool) -> dict[str, Any]:
    sizes = [100, 300] if quick else [1000, 3000]
    with environment("storm") as (tmp, template, server):
        results = [
            asyncio.run(storm(tmp, template, server, n, offset=i * 100_000)) for i, n in enumerate(sizes)
        ]
    rows = []
    for r in results:
        s, o = r["sigterm_to_back_s"], r["close_to_back_s"]
        rows.append(
            [
                f"{r['tabs']:,}",
                f"{s['p50']:.2f} / {s['p99']:.2f} / {s['max']:.2f}",
                f"{o['p50']:.2f} / {o['p99']:.2f} / {o['max']:.2f}",
                f"{r['all_back_s']:.2f}"
                if r["not_back"] == 0
                else f"{r['not_back']} not back in {BACK_WAIT:.0f} s",
                f"{r['back_within_target']:,}",
                f"{r['refused_total']:,} ({', '.join(f'{k} {v}' for k, v in sorted(r['refused'].items())) or 'none'})",
                str(r["wsreject_lines"]),
                f"{r['managers_stopped']:,} / {r['managers_started']:,}",
                str(r["fences"]),
                f"{r['killed_on_shutdown']:,} / {r['killed_on_b']:,}",
                f"{r['a_exit_s']:.1f}" if r["a_exit_s"] == r["a_exit_s"] else "n/a",
                f"{r['client_cpu_percent']:.0f}%",
            ]
        )
    big = results[-1]
    met = all(
        r["not_back"] == 0
        and r["all_back_s"] <= BACK_WITHIN
        and r["refused_total"] == 0
        and r["managers_stopped"] == 0
        and r["managers_started"] == 0
        for r in results
    )
    return {
        "title": "7. Reconnect storm (rolling deploy)",
        "target": f"all tabs back within {BACK_WITHIN:g} s, not one handshake refused, no manager stopped or restarted",
        "verdict": "met" if met else "missed",
        "headline": f"{big['tabs']:,} tabs: last back after "
        + (
            f"{big['all_back_s']:.1f} s"
            if big["not_back"] == 0
            else f"> {BACK_WAIT:.0f} s ({big['not_back']:,} not back)"
        )
        + f", p99 {big['sigterm_to_back_s']['p99']:.1f} s; {big['refused_total']:,} refused; "
        f"{big['managers_stopped']:,} managers stopped, {big['managers_started']:,} started",
        "tables": [
            {
                "title": "N tabs of N users on daphne A (?live=1, worker running their managers); daphne B started, "
                "A gets SIGTERM, every tab reconnects to B with the page's backoff",
                "columns": [
                    "tabs",
                    "SIGTERM -> back p50 / p99 / max (s)",
                    "own close -> back p50 / p99 / max (s)",
                    "all back after (s)",
                    f"back within {BACK_WITHIN:g} s",
                    "handshakes refused (by kind)",
                    "WSREJECT lines",
                    "managers stopped / started (worker log)",
                    "fences",
                    "'took too long to shut down' lines A / B",
                    f"A exited after (s; n/a: not within {BACK_WAIT:.0f} s)",
                    "client CPU",
                ],
                "rows": rows,
            }
        ],
        "notes": [
            *(
                f"{r['tabs']:,}: only {r['open_before']:,} tabs were open when A got SIGTERM (the others count as "
                "not back)"
                for r in results
                if r["open_before"] < r["tabs"]
            ),
            *(
                f"{r['tabs']:,}: daphne logged {r['not_untracked_lines']:,} 'connection of user N not untracked' "
                "warnings (presence left for the sweeper)"
                for r in results
                if r["not_untracked_lines"]
            ),
            *(
                f"{r['tabs']:,}: close code each tab saw when A went away: {r['close_codes_seen']}"
                for r in results
            ),
            "Reconnect rule: presence.js (0.5 s doubling to 15 s, jitter x0.75-1.25), reset on every open; a "
            "refused or failed attempt counts as a close. Managers stopped / started are counted from SIGTERM "
            f"until {CLEANUP_TIMEOUT + 3:g} s after the last tab was back.",
            "Client CPU in % of one core (all tabs run in the benchmark process, on the same 2 cores as daphne, "
            "the worker and Redis).",
        ],
        "data": {"sizes": results},
    }


if __name__ == "__main__":
    from benchmarks.runner import main_for

    main_for(run, sys.argv[1:])
