"""BroadcastBackend: where a user's stream comes in (their ingest) and how it is sent on.

One instance per process (broadcast.backends.get_backend()), shared by every user's
CloudflareManager in a worker and by the views in daphne, so it keeps no per-user state in
memory that another process would need (that goes in the database or Redis).

Methods children must implement (as django.contrib.sessions.backends.base does):

    unavailable()                   why streaming cannot work here (a missing binary, no
                                    credentials), or None. Cheap, sync; the Stream page
                                    shows the reason and go_live is refused with it.
    stored_ingest(user_id)          the user's input as stored here (the database only: no
                                    API call, nothing created), or None. A manager's start
                                    reads this; the input is created on demand (ingest)
    ingest(user_id)                 ensure the user's input exists; its server URL + key
                                    (the Stream page asks for it: create_key, show_key)
    new_key(user_id)                a fresh key; the old one is refused from this call on
    input_connected(user_id)        is a publisher connected now? (polling fallback: the
                                    push path is broadcast.inputs.set_input)
    run_output(user_id, spec, report, may_act)
                                    runs until cancelled: sends the user's ingest on to
                                    ``spec`` without re-encoding; calls report(state, error)
                                    with state in off/starting/live/failed (error: a short
                                    reason without secrets, for failed); retries with
                                    backoff by itself (livestream.tasks.retry_delay); when
                                    cancelled it stops the output before returning (the
                                    caller waits up to 2 s). Starts an effect outside
                                    Redis (a relay) only while ``may_act()`` (the calling
                                    component's: false for good once it was stopped, even
                                    if a lost cancel leaves this running; default: the
                                    worker's fence for the user).

Optional (defaults here):

    input_state_changed(user_id, connected)
                                    told by the user's CloudflareManager when the input
                                    came or went (the self-hosted relays restart at once
                                    instead of waiting out a backoff); default: nothing.
    ingest_info()                   {"obs": [...]} extra text for the Stream page (the OBS
                                    settings to use); default: the generic ones.

Both backends report input changes with broadcast.inputs.set_input(user_id, connected).
Secrets (keys, URLs with credentials) are never logged: log ids and secrets.mask(key).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Output states, as shown on the Stream page.
OFF, STARTING, LIVE, FAILED = "off", "starting", "live", "failed"
OUTPUT_STATES = (OFF, STARTING, LIVE, FAILED)

# report(state, error): error is None unless state is FAILED.
Report = Callable[[str, str | None], None]
MayAct = Callable[[], bool]


class BackendError(RuntimeError):
    """ingest/new_key/input_connected failed for a reason worth showing: str() is short and
    never a secret (e.g. "Cloudflare refused the API token")."""


@dataclass(frozen=True)
class Ingest:
    """What OBS needs: "Server" and "Stream Key" (a publisher sends to server_url/stream_key)."""

    server_url: str
    stream_key: str


@dataclass(frozen=True)
class OutputSpec:
    """One destination: a StreamOutput row (id "<pk>") or a registered source's ("twitch:<id>")."""

    id: str
    name: str
    url: str
    key: str
    enabled: bool

    def target(self) -> str:
        """The full publish URL: url + "/" + key (as OBS joins "Server" and "Stream Key")."""
        if not self.key:
            return self.url
        return self.url.rstrip("/") + "/" + self.key

    def __repr__(self) -> str:  # never the key, nor a URL that might carry credentials
        return f"OutputSpec(id={self.id!r}, name={self.name!r}, enabled={self.enabled})"


class BroadcastBackend:
    """Base class; see the module docstring for what children implement."""

    name: str = "base"

    def unavailable(self) -> str | None:
        raise NotImplementedError

    async def stored_ingest(self, user_id: str) -> Ingest | None:
        raise NotImplementedError

    async def ingest(self, user_id: str) -> Ingest:
        raise NotImplementedError

    async def new_key(self, user_id: str) -> Ingest:
        raise NotImplementedError

    async def input_connected(self, user_id: str) -> bool:
        raise NotImplementedError

    async def run_output(
        self, user_id: str, spec: OutputSpec, report: Report, may_act: MayAct | None = None
    ) -> None:
        raise NotImplementedError

    # -- optional -------------------------------------------------------------

    def input_state_changed(self, user_id: str, connected: bool) -> None:
        """The user's input came (True) or went (False); default: nothing to do."""

    def ingest_info(self) -> dict[str, Any]:
        """Extra text for the Stream page: {"obs": [lines of OBS settings]}."""
        return {
            "obs": [
                "Service: Custom…; Server and Stream Key as shown",
                "Output: x264 (or hardware H.264), CBR 2500-6000 kbit/s, keyframe interval 2 s",
                "Audio: AAC 48 kHz, 128-160 kbit/s",
            ]
        }
