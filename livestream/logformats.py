"""The worker's log events: one grammar for the code that logs them and the tools that read them.

Log lines are an interface: the tests, the benchmarks and people watching a worker
read them. Each event the worker logs is a %-format here, used by the log call
itself; the harness (devtools/logs.py) turns the same constants into regexes, so
the writer and the readers cannot drift apart. The text of each line is fixed:
change a format only together with everything that reads it.

Worker events are logged under ``WORKER_LOGGER`` (the name shows in each line,
``<asctime> <level> livestream.presence_manager [PresenceManager] ...``), whichever
module logs them; ConsoleLogger's lines under ``livestream.console``.
"""

from __future__ import annotations

WORKER_LOGGER = "livestream.presence_manager"

WORKER_STARTED = "[PresenceManager] worker %s started"  # worker id
WORKER_STOPPED = "[PresenceManager] worker %s stopped"  # worker id
MANAGER_STARTED = "[PresenceManager] UserStreamManager started: %s"  # user id
MANAGER_STOPPED = "[PresenceManager] UserStreamManager stopped: %s"  # user id
PRESENCE_JOIN = "[PresenceManager] presence join: %s"  # user id, a line per connection
PRESENCE_LEAVE = "[PresenceManager] presence leave: %s (%d sessions left)"  # user id, connections left
CLEANUP_SCHEDULED = "[PresenceManager] cleanup scheduled: %s in %ss"  # user id, delay (``:g``)
FENCE = "[PresenceManager] leases not renewed for %.1fs; stopping %d managers"  # seconds, managers
CONSOLE_LOG = "[UserStreamManager:%s] Console log #%d - %s"  # user id, count, UTC time with Z

# The CloudflareManager (issue 18: livestream/components/cloudflare_manager.py); pinned by the issue.
INPUT_CHANGED = "[UserStreamManager:%s] input %s"  # user id, "connected" | "disconnected"
OUTPUT_LIVE = "[UserStreamManager:%s] output %s live"  # user id, output id
OUTPUT_FAILED = "[UserStreamManager:%s] output %s failed: %s"  # user id, output id, reason (no key)
STREAM_ENDED = "[UserStreamManager:%s] stream ended: %s"  # user id, reason
