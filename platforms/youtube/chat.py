"""YouTube live chat (placeholder until the Data API client lands): reported as failed."""

from __future__ import annotations

from platforms.clients import Connected, LoginFailed, PlatformClient


class YouTubeClient(PlatformClient):
    max_length = 200

    async def session(self, connected: Connected) -> None:
        raise LoginFailed("YouTube chat is not supported yet")
