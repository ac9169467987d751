"""The component API: what a UserStreamManager supervises for one user.

  run()                      runs until cancelled (raising restarts it, see supervisor.py)
  status()                   extra state for the debug surfaces
  emit(event, data, sticky)  an event to every open dashboard tab of this user
  on_command(name, args)     a tab's command; returns the reply's result, or raises
                             CommandError (its text is the reply's "error")
  token, fence               the fencing token of the lease this run belongs to (set by the
                             UserStreamManager before run()); every Redis write a component
                             makes is a fenced script (livestream/ownership/fencing.py)
  may_act(), register_external_effect(stop)
                             effects outside Redis: act only while may_act(); stop() is
                             called before the lease can lapse unrenewed

See the README's "Writing a component" and livestream/components/emitter.py for the
wire format.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from livestream.components import emitter as component_events
from livestream.ownership import fencing, history


class CommandError(Exception):
    """A user-facing error: its str() is sent to the tab as the reply's "error"."""


class Component:
    """One supervised piece of a user's stream (chat connector, alert queue, ...).

    Subclasses implement ``run``: it runs until cancelled. Raising restarts the
    component with a fresh instance (with backoff, see livestream/components/supervisor.py);
    returning normally means it is done and it is not restarted.
    """

    user_id: str
    # The fencing token of the lease grant this run belongs to; None outside a worker
    # (tests, tools): nothing is checked then.
    token: int | None = None
    # Set by its supervisor when the run is asked to end: may_act() is False from then on.
    stopped: bool = False
    _fence: fencing.Fence | None = None

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id

    @property
    def fence(self) -> fencing.Fence:
        """This run's token with the keys and argument a fenced script takes (one per run:
        a refused write is logged once per run)."""
        if self._fence is None or self._fence.token != self.token:
            self._fence = fencing.Fence(self.user_id, self.token, type(self).__name__)
        return self._fence

    def may_act(self) -> bool:
        """Whether an effect outside Redis may happen now (see fencing.may_act): ask right
        before each one, with no await in between. Never once this instance was asked to
        stop (``stopped``, set by its supervisor): a run whose cancellation was lost (see
        livestream.tasks.keep_cancelling) must not act beside the next one."""
        return not self.stopped and fencing.may_act(self.user_id)

    def register_external_effect(self, stop: Callable[[], None]) -> Callable[[], None]:
        """See fencing.register_external_effect; returns the unregister function."""
        return fencing.register_external_effect(self.user_id, stop)

    async def run(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """Extra state shown on the debug surfaces (JSON-serializable)."""
        return {}

    async def emit(self, event: str, data: dict[str, Any], *, sticky: bool = False) -> None:
        """Send {"type": "event", "component": <class name>, "event": event, "data": data} to every open
        dashboard tab of this user (only this user), in order. sticky=True also keeps it as the component's
        current state for that event name, sent to a tab right after it connects."""
        fence = self.fence
        began = time.time()
        sent = await component_events.emit(
            self.user_id, type(self).__name__, event, data, sticky=sticky, token=fence.token
        )
        if sent < 0:
            fence.refused(f"event {event!r}")
        elif history.enabled():  # a fault run's checker reads it (livestream/ownership/history.py)
            history.record(
                "effect",
                what=f"{type(self).__name__}:{event}",
                user=self.user_id,
                token=self.token,
                id=data.get("id"),
                t0=began,
            )

    async def on_command(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """Default: raise CommandError(f"unknown command {name!r}")."""
        raise CommandError(f"unknown command {name!r}")
