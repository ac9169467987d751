"""Google's OAuth token endpoint and the YouTube Data API v3 calls the code makes, as
documented (developers.google.com/identity/protocols/oauth2/web-server#offline,
developers.google.com/youtube/v3/live/docs).

  POST /token  grant_type=refresh_token&refresh_token&client_id&client_secret (form)
       200 {"access_token", "expires_in", "scope", "token_type": "Bearer"} (no new refresh token)
       400 {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
  GET  /youtube/v3/liveBroadcasts?part=snippet&broadcastStatus=active
  GET  /youtube/v3/liveStreams?part=cdn&mine=true
  GET  /youtube/v3/liveChat/messages?liveChatId&part=snippet,authorDetails[&pageToken]
       {"kind": "youtube#liveChatMessageListResponse", "pollingIntervalMillis", "nextPageToken",
        "items": [liveChatMessage...]}
  POST /youtube/v3/liveChat/messages?part=snippet   -> the inserted liveChatMessage
  PUT  /youtube/v3/liveBroadcasts?part=snippet {"id", "snippet": {"title", "scheduledStartTime", ...}}
       -> the updated liveBroadcast; 400 when the title or the scheduledStartTime is missing
       ("invalidScheduledStartTime") or the title is over 100 characters; 404 for another id
  Errors: 401 {"error": {"code": 401, "errors": [{"reason": "authError"}]}};
          403 {"error": {"code": 403, "errors": [{"domain": "youtube.quota", "reason": "quotaExceeded"}]}}
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from tests.contract.server import ContractServer, Reply, Request

CLIENT_ID = "google-client-id"
CLIENT_SECRET = "google-client-secret"
CHAT_ID = "Cg0KC2xpdmUtY2hhdC0x"
INGEST = ("rtmp://a.rtmp.youtube.com/live2", "abcd-efgh-ijkl-mnop")


def google_error(code: int, reason: str, message: str) -> Reply:
    return Reply(
        code,
        {
            "error": {
                "code": code,
                "message": message,
                "errors": [{"message": message, "domain": "youtube", "reason": reason}],
            }
        },
    )


class YouTubeContract(ContractServer):
    def __init__(self, access_token: str, refresh_token: str, polling_ms: int = 300) -> None:
        super().__init__()
        self.valid_access = {access_token}
        self.valid_refresh = {refresh_token}
        self.polling_ms = polling_ms
        self.messages: list[dict[str, Any]] = []
        self.quota_exhausted = False
        self.live = True
        self.broadcast_snippet: dict[str, Any] = {
            "title": "Live",
            "description": "my stream",
            "scheduledStartTime": "2026-12-06T18:00:00Z",
            "liveChatId": CHAT_ID,
        }
        self._lock = threading.Lock()
        self._n = 0
        self.routes = {
            ("POST", "/token"): self.token,
            ("GET", "/youtube/v3/liveBroadcasts"): self.authed(self.broadcasts),
            ("PUT", "/youtube/v3/liveBroadcasts"): self.authed(self.update_broadcast),
            ("GET", "/youtube/v3/liveStreams"): self.authed(self.streams),
            ("GET", "/youtube/v3/liveChat/messages"): self.authed(self.list_messages),
            ("POST", "/youtube/v3/liveChat/messages"): self.authed(self.insert),
        }

    @property
    def api_url(self) -> str:
        return self.url + "/youtube/v3"

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    def say(self, author: str, text: str, *, owner: bool = False) -> str:
        with self._lock:
            self._n += 1
            message_id = f"msg-{self._n}"
            self.messages.append(
                {
                    "kind": "youtube#liveChatMessage",
                    "id": message_id,
                    "snippet": {
                        "type": "textMessageEvent",
                        "liveChatId": CHAT_ID,
                        "publishedAt": datetime.fromtimestamp(time.time(), UTC)
                        .isoformat()
                        .replace("+00:00", "Z"),
                        "hasDisplayContent": True,
                        "displayMessage": text,
                        "textMessageDetails": {"messageText": text},
                    },
                    "authorDetails": {
                        "channelId": f"UC{author}",
                        "displayName": author,
                        "isChatOwner": owner,
                        "isChatModerator": False,
                        "isChatSponsor": False,
                        "isVerified": False,
                    },
                }
            )
            return message_id

    def token(self, request: Request) -> Reply:
        form = request.form()
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return Reply(
                401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}
            )
        if form.get("grant_type") != "refresh_token" or form.get("refresh_token") not in self.valid_refresh:
            return Reply(
                400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            )
        with self._lock:
            access = f"ya29.new-{len(self.calls('POST', '/token'))}"
            self.valid_access = {access}
        return Reply(
            200,
            {
                "access_token": access,
                "expires_in": 3599,
                "scope": "https://www.googleapis.com/auth/youtube",
                "token_type": "Bearer",
            },
        )

    def authed(self, route):  # type: ignore[no-untyped-def]
        def check(request: Request) -> Reply:
            if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.valid_access:
                return google_error(401, "authError", "Invalid Credentials")
            if self.quota_exhausted:
                return google_error(
                    403,
                    "quotaExceeded",
                    "The request cannot be completed because you have exceeded your quota.",
                )
            return route(request)

        return check

    def broadcasts(self, request: Request) -> Reply:
        items = (
            [
                {
                    "kind": "youtube#liveBroadcast",
                    "id": "bc1",
                    "snippet": dict(self.broadcast_snippet),
                }
            ]
            if self.live
            else []
        )
        return Reply(200, {"kind": "youtube#liveBroadcastListResponse", "items": items})

    def update_broadcast(self, request: Request) -> Reply:
        body = request.json() or {}
        snippet = body.get("snippet") or {}
        if request.query.get("part") != "snippet":
            return google_error(400, "invalidPart", "The part parameter must name the parts sent.")
        if body.get("id") != "bc1" or not self.live:
            return google_error(404, "liveBroadcastNotFound", "The broadcast does not exist.")
        title = snippet.get("title")
        if not isinstance(title, str) or not title or len(title) > 100:
            return google_error(400, "invalidTitle", "The broadcast's title is missing or too long.")
        if not snippet.get("scheduledStartTime"):
            return google_error(400, "invalidScheduledStartTime", "The scheduled start time is required.")
        with self._lock:
            # A snippet update replaces the snippet: what was not sent is gone (liveChatId stays).
            self.broadcast_snippet = {"liveChatId": CHAT_ID, **snippet}
        return Reply(200, {"kind": "youtube#liveBroadcast", "id": "bc1", "snippet": self.broadcast_snippet})

    def streams(self, request: Request) -> Reply:
        info = {
            "ingestionAddress": INGEST[0],
            "streamName": INGEST[1],
            "backupIngestionAddress": INGEST[0] + "?backup=1",
        }
        return Reply(
            200,
            {
                "kind": "youtube#liveStreamListResponse",
                "items": [{"id": "st1", "cdn": {"ingestionType": "rtmp", "ingestionInfo": info}}],
            },
        )

    def list_messages(self, request: Request) -> Reply:
        if request.query.get("liveChatId") != CHAT_ID:
            return google_error(
                404, "liveChatNotFound", "The live chat that you are trying to retrieve cannot be found."
            )
        token = request.query.get("pageToken", "")
        start = int(token[1:]) if token.startswith("p") and token[1:].isdigit() else 0
        with self._lock:
            items = self.messages[start:]
            end = len(self.messages)
        return Reply(
            200,
            {
                "kind": "youtube#liveChatMessageListResponse",
                "pollingIntervalMillis": self.polling_ms,
                "nextPageToken": f"p{end}",
                "pageInfo": {"totalResults": len(items), "resultsPerPage": len(items)},
                "items": items,
            },
        )

    def insert(self, request: Request) -> Reply:
        snippet = (request.json() or {}).get("snippet") or {}
        text = (snippet.get("textMessageDetails") or {}).get("messageText")
        if snippet.get("liveChatId") != CHAT_ID or snippet.get("type") != "textMessageEvent" or not text:
            return google_error(400, "invalidValue", "bad snippet")
        message_id = self.say("Streamer", text, owner=True)
        return Reply(200, self.messages[-1] | {"id": message_id})
