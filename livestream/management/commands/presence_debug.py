"""``manage.py presence_debug [--json [--detail]]``: who is present, what runs where, what is about to stop.

``--json`` is the documented shape, exactly (presence, managers, pending cleanups: tests
pin it). ``--json --detail`` adds everything the text report shows besides: the live
workers, the staff holds, the totals, component extras and when it was taken (the
admin's JSON, Snapshot.as_detail).

The CLI twin of the admin's presence debug page (and of the original's
``PresenceHelper.debug()``); it reads the shared state any worker publishes to
Redis (livestream/observe/state.py), so it works from any machine with the settings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from livestream.conf import get_settings
from livestream.observe.state import Snapshot, describe, format_duration, read_state_sync


class Command(BaseCommand):
    help = "Print presence per user, running managers with their components, pending cleanups and totals."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--json",
            action="store_true",
            help='One JSON object: {"presence": ..., "managers": ..., "pending_cleanups": ...}.',
        )
        parser.add_argument(
            "--detail",
            action="store_true",
            help='With --json: also "workers", "held", "totals" and "taken_at", as the text report shows them.',
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            snapshot = read_state_sync()
        except Exception as exc:
            raise CommandError(f"Could not read the shared state from Redis: {describe(exc)}") from exc
        if options["json"]:
            data = snapshot.as_detail() if options["detail"] else snapshot.as_json()
            self.stdout.write(json.dumps(data, indent=2))
        else:
            self.stdout.write("\n".join(report(snapshot)))


def report(s: Snapshot) -> list[str]:
    """The human-readable report, one line per item."""
    conf = get_settings()
    now = s.taken_at.timestamp()
    t = s.totals
    lines = [f"Presence debug ({conf.KEY_PREFIX}) at {s.taken_at:%Y-%m-%d %H:%M:%S} UTC", ""]

    lines.append(
        f"Presence ({conf.TOPIC}): {_n(t['present_users'], 'user')}, {_n(t['open_sessions'], 'session')}"
    )
    for uid, metas in s.presence.items():
        email = metas[0].get("email", "") if metas else ""
        lines.append(f"  user {uid} {email} - {_n(len(metas), 'session')}")
        for meta in metas:
            lines.append(f"    - {_meta(meta, now)}")

    lines += ["", f"Running managers: {t['running_managers']}"]
    for uid, m in s.managers.items():
        up = format_duration(now - m.started_at.timestamp())
        lines.append(f"  user {uid} on {m.worker}, started {m.started_at:%Y-%m-%d %H:%M:%S} UTC (up {up})")
        for name, c in m.components.items():
            extra = "".join(f", {k} {v}" for k, v in c.extra.items())
            lines.append(f"    {name}: {c.state}, {_n(c.restarts, 'restart')}{extra}")

    if s.held:
        lines += ["", f"Stopped by staff, held until their next join: {t['held_by_staff']}"]
        lines += [f"  user {uid} (stopped by staff {by})" for uid, by in s.held.items()]

    lines += ["", f"Pending cleanups: {t['pending_cleanups']}"]
    lines += [f"  user {uid} due in {due:.1f}s" for uid, due in s.pending_cleanups.items()]

    lines += ["", f"Live workers: {t['live_workers']}"]
    for wid, w in s.workers.items():
        count = sum(1 for m in s.managers.values() if m.worker == wid)
        lines.append(
            f"  {wid} (host {w.host}, pid {w.pid}): {_n(count, 'manager')}, last tick {w.seen_ago:.1f}s ago"
        )

    lines += [
        "",
        "Totals: "
        + ", ".join(
            [
                _n(t["present_users"], "present user"),
                _n(t["open_sessions"], "open session"),
                _n(t["running_managers"], "running manager"),
                _n(t["pending_cleanups"], "pending cleanup"),
                _n(t["live_workers"], "live worker"),
            ]
        ),
    ]
    return lines


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _meta(meta: dict[str, Any], now: float) -> str:
    parts = [f"ref {meta.get('ref', '?')}"]
    joined = meta.get("joined_at")
    if isinstance(joined, int | float):
        parts.append(
            f"joined {datetime.fromtimestamp(joined, UTC):%H:%M:%S} ({format_duration(now - joined)} ago)"
        )
    parts += [f"{k}={v}" for k, v in meta.items() if k not in ("ref", "joined_at")]
    return ", ".join(parts)
