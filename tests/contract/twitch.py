"""Twitch's OAuth token endpoint and the Helix calls the code makes, as documented
(dev.twitch.tv/docs/authentication/refresh-tokens, dev.twitch.tv/docs/api/reference).

  POST /oauth2/token  grant_type=refresh_token&refresh_token&client_id&client_secret (form)
       200 {"access_token", "refresh_token", "expires_in", "scope": [...], "token_type": "bearer"}
       400 {"status": 400, "message": "Invalid refresh token"}
  Helix (Authorization: Bearer <token>, Client-Id: <client id>), 401 when either is wrong:
       {"error": "Unauthorized", "status": 401, "message": "Invalid OAuth token"}
  GET   /helix/users                              {"data": [{"id", "login", "display_name", ...}]}
  GET   /helix/streams/key?broadcaster_id=        {"data": [{"stream_key": "live_..."}]}
  GET   /helix/games?name=                        {"data": [{"id", "name", "box_art_url"}]}
  PATCH /helix/channels?broadcaster_id=  {"title", "game_id"}  -> 204
"""

from __future__ import annotations

import itertools
import threading

from tests.contract.server import ContractServer, Reply, Request

CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret"
USER_ID = "141981764"
STREAM_KEY = "live_141981764_abcdefghijklmnopqrst"
GAMES = {"Just Chatting": "509658", "Science & Technology": "509670"}


class TwitchContract(ContractServer):
    def __init__(self, access_token: str, refresh_token: str, login: str = "streamer") -> None:
        super().__init__()
        self.valid_access = {access_token}
        self.valid_refresh = {refresh_token}
        self.login = login
        self.channel: dict[str, str] = {}
        self._n = itertools.count(1)
        self._token_lock = threading.Lock()
        self.routes = {
            ("POST", "/oauth2/token"): self.token,
            ("GET", "/helix/users"): self.authed(self.users),
            ("GET", "/helix/streams/key"): self.authed(self.stream_key),
            ("GET", "/helix/games"): self.authed(self.games),
            ("PATCH", "/helix/channels"): self.authed(self.channels),
        }

    @property
    def helix_url(self) -> str:
        return self.url + "/helix"

    @property
    def token_url(self) -> str:
        return self.url + "/oauth2/token"

    def token(self, request: Request) -> Reply:
        form = request.form()
        if form.get("grant_type") != "refresh_token" or (
            form.get("client_id"),
            form.get("client_secret"),
        ) != (
            CLIENT_ID,
            CLIENT_SECRET,
        ):
            return Reply(400, {"status": 400, "message": "Invalid client"})
        with self._token_lock:
            if form.get("refresh_token") not in self.valid_refresh:
                return Reply(400, {"status": 400, "message": "Invalid refresh token"})
            # Twitch may hand out a new refresh token; the old one stops working.
            self.valid_refresh.discard(form["refresh_token"])
            n = next(self._n)
            access, refresh = f"access-{n}", f"refresh-{n}"
            self.valid_access = {access}
            self.valid_refresh.add(refresh)
        scope = ["channel:read:stream_key", "channel:manage:broadcast", "chat:read", "chat:edit"]
        return Reply(
            200,
            {
                "access_token": access,
                "refresh_token": refresh,
                "expires_in": 14400,
                "scope": scope,
                "token_type": "bearer",
            },
        )

    def authed(self, route):  # type: ignore[no-untyped-def]
        def check(request: Request) -> Reply:
            bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
            if bearer not in self.valid_access or request.headers.get("client-id") != CLIENT_ID:
                return Reply(401, {"error": "Unauthorized", "status": 401, "message": "Invalid OAuth token"})
            return route(request)

        return check

    def users(self, request: Request) -> Reply:
        return Reply(
            200, {"data": [{"id": USER_ID, "login": self.login, "display_name": self.login.title()}]}
        )

    def stream_key(self, request: Request) -> Reply:
        if request.query.get("broadcaster_id") != USER_ID:
            return Reply(400, {"error": "Bad Request", "status": 400, "message": "Missing broadcaster_id"})
        return Reply(200, {"data": [{"stream_key": STREAM_KEY}]})

    def games(self, request: Request) -> Reply:
        name = request.query.get("name", "")
        data = [{"id": GAMES[name], "name": name, "box_art_url": ""}] if name in GAMES else []
        return Reply(200, {"data": data})

    def channels(self, request: Request) -> Reply:
        if request.query.get("broadcaster_id") != USER_ID:
            return Reply(400, {"error": "Bad Request", "status": 400, "message": "Missing broadcaster_id"})
        self.channel.update(request.json())
        return Reply(204)
