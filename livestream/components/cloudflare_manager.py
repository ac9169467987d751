"""CloudflareManager: the user's ingest and outputs (issue 18). Filled in below the interface commit."""

from __future__ import annotations

import asyncio

from livestream.components.base import Component


class CloudflareManager(Component):
    async def run(self) -> None:
        await asyncio.Event().wait()
