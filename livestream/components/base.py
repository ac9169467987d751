"""The component API: what a UserStreamManager supervises for one user.

  run()                      runs until cancelled (raising restarts it, see supervisor.py)
  status()                   extra state for the debug surfaces
  emit(event, data, sticky)  an event to every open dashboard tab of this user
  on_command(name, args)     a tab's command; returns the reply's result, or raises
                             CommandError (its text is the reply's "error")

See the README's "Writing a component" and livestream/components/emitter.py for the
wire format.
"""

from __future__ import annotations

from typing import Any

from livestream.components import emitter as component_events


class CommandError(Exception):
    """A user-facing error: its str() is sent to the tab as the reply's "error"."""


class Component:
    """One supervised piece of a user's stream (chat connector, alert queue, ...).

    Subclasses implement ``run``: it runs until cancelled. Raising restarts the
    component with a fresh instance (with backoff, see livestream/components/supervisor.py);
    returning normally means it is done and it is not restarted.
    """

    user_id: str

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id

    async def run(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """Extra state shown on the debug surfaces (JSON-serializable)."""
        return {}

    async def emit(self, event: str, data: dict[str, Any], *, sticky: bool = False) -> None:
        """Send {"type": "event", "component": <class name>, "event": event, "data": data} to every open
        dashboard tab of this user (only this user), in order. sticky=True also keeps it as the component's
        current state for that event name, sent to a tab right after it connects."""
        await component_events.emit(self.user_id, type(self).__name__, event, data, sticky=sticky)

    async def on_command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Default: raise CommandError(f"unknown command {name!r}")."""
        raise CommandError(f"unknown command {name!r}")
