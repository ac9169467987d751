"""Wake-ups for the CloudflareManagers of one process when their user's input changes.

``broadcast.inputs.set_input`` PUBLISHes the user id on ``keys.broadcast_wake()``. Each
process keeps ONE subscriber connection (per event loop) while at least one user is
registered here, and sets that user's events; wake-ups for users not here are ignored.
A wake-up published while the subscriber was reconnecting is lost, so every (re)subscribe
wakes every registered user once (they re-read their state), and the CloudflareManager
also polls (INPUT_POLL_INTERVAL). The subscriber is livestream/pushes/wakeups.py's, as the
AlertManagers' (alerts/wakeups.py) is.
"""

from __future__ import annotations

import logging

from livestream import keys
from livestream.pushes.wakeups import WakeSubscriber
from livestream.tasks import per_loop

logger = logging.getLogger("broadcast.listener")


class InputListener(WakeSubscriber):
    """The registered CloudflareManagers of one event loop (see livestream/pushes/wakeups.py)."""

    def __init__(self) -> None:
        super().__init__(keys.broadcast_wake, "broadcast", logger)


listener = per_loop(InputListener)
