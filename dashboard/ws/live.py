"""What the dashboard socket pushes to the page, and who gets it.

Every accepted dashboard socket is, on its process's hub (dashboard/ws/hub.py),
subscribed to:

  push.user_channel(user_id)       (sockets opened with ``?live=1``, as the dashboard
                                   page's are) the worker publishes that user's
                                   manager status and, coalesced, their open-session
                                   count (livestream/pushes/status.py);
  push.session_channel(key)        logging out or starting/ending impersonation in
                                   that session closes its sockets with 4001
                                   (dashboard/auth/sessions.py), because Channels checks
                                   auth only at connect;
  hub.control_channel(user_id)     deactivating the account closes them with 4003;
                                   components' events and command replies (every
                                   socket, live or not: README "Writing a component").

What reaches the browser (presence.js turns each into a ``streampai:message``),
forwarded exactly as the worker published it:

  {"type": "manager", "user_id": "7", "state": "running", "started_at": ...,
   "components": {"ConsoleLogger": {"state": "running", "restarts": 0, "count": 12}}}
  {"type": "sessions", "user_id": "7", "sessions": 3}

A message whose ``user_id`` is not the socket's own is dropped (logged as an error).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

# WebSocket close code telling the page its session ended (logout, impersonation
# switch): presence.js reloads instead of reconnecting with a stale page.
SESSION_ENDED = 4001


def wants_pushes(scope: dict[str, Any]) -> bool:
    """Only a socket opened with ``?live=1`` (the dashboard page's) gets status pushes.

    A client that never reads its socket (a script, a test) would otherwise
    fill its receive queue with a push a second, stop reading, and lose the
    connection to its own keepalive timeout.
    """
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query.get("live") == ["1"]
