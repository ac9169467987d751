"""The base class of every component a UserStreamManager supervises."""

from __future__ import annotations

from typing import Any


class Component:
    """One supervised piece of a user's stream (chat connector, alert queue, ...).

    Subclasses implement ``run``: it runs until cancelled. Raising restarts the
    component with a fresh instance (with backoff, see livestream/supervisor.py);
    returning normally means it is done and it is not restarted.
    """

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id

    async def run(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """Extra state shown on the debug surfaces (JSON-serializable)."""
        return {}
