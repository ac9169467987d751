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
# A component's write carried a token older than the user's current one (once per component run).
FENCE_REFUSED = "[UserStreamManager:%s] %s: %s refused, token %s is stale"  # user, component, what, token
# The lease keeper stopped the effects outside Redis: its leases may lapse within EFFECT_STOP_MARGIN.
EFFECTS_STOPPED = "[PresenceManager] leases about to lapse unrenewed; stopped %d external effects"  # count
CONSOLE_LOG = "[UserStreamManager:%s] Console log #%d - %s"  # user id, count, UTC time with Z

# Connected platforms (livestream/components/platform_supervisor.py); never a token or key:
# the connection's public id ("twitch:3") only.
PLATFORM_CONNECTED = "[UserStreamManager:%s] platform %s connected"  # user id, connection id
PLATFORM_RETRY = "[UserStreamManager:%s] platform %s disconnected (%s); retrying in %.2fs"  # user, id, why, s
PLATFORM_FAILED = "[UserStreamManager:%s] platform %s failed: %s"  # user id, connection id, reason
PLATFORM_STOPPED = "[UserStreamManager:%s] platform %s stopped"  # user id, connection id

# The CloudflareManager (issue 18: livestream/components/cloudflare_manager.py); pinned by the issue.
INPUT_CHANGED = "[UserStreamManager:%s] input %s"  # user id, "connected" | "disconnected"
OUTPUT_LIVE = "[UserStreamManager:%s] output %s live"  # user id, output id
OUTPUT_FAILED = "[UserStreamManager:%s] output %s failed: %s"  # user id, output id, reason (no key)
STREAM_ENDED = "[UserStreamManager:%s] stream ended: %s"  # user id, reason
