"""The self-hosted backend: nginx-rtmp ingest (broadcast/ingest.py) + ffmpeg relays (broadcast/relay.py).

* ``ingest``/``new_key``: a StreamIngest row per user (backend "selfhosted"); the key is
  random, stored encrypted and looked up by its hash when nginx asks (broadcast/views.py).
  ``new_key`` also drops a publisher still using the old key (nginx's /control).
* ``input_connected``: nginx's /stat (over its private unix socket) lists the publishers
  (broadcast/ingest_control.py: one request answers every user's poll in a worker).
* ``run_output``: one relay at a time per output, from ``rtmp://127.0.0.1:<RTMP_PORT>/live/u<id>``
  (nginx lets only this machine play) to the output; while the input is gone it waits
  ("starting") and starts again as soon as it is back; a relay that fails is retried with
  backoff (RELAY_BACKOFF .. RELAY_BACKOFF_MAX, livestream.tasks.retry_delay), reported
  ``failed`` with the reason meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from django.conf import settings

from broadcast import ingest as nginx
from broadcast import ingest_control, relay
from broadcast.backends.base import (
    FAILED,
    LIVE,
    OFF,
    STARTING,
    BackendError,
    BroadcastBackend,
    Ingest,
    MayAct,
    OutputSpec,
    Report,
)
from broadcast.db import run_db
from livestream.conf import get_settings
from livestream.tasks import retry_delay
from streampai.secrets import SecretError

logger = logging.getLogger("livestream.presence_manager")  # the worker's own log lines

# A relay that ran this long (seconds) counts as having worked: the next failure starts
# the backoff from the beginning again.
HEALTHY_AFTER = 10.0
# After a relay ends, how long to wait for the input's state to say the publisher left
# (the callback may arrive a moment after ffmpeg saw the end of the stream).
INPUT_SETTLE = 0.5


def ingest_dir() -> Path:
    configured = get_settings().INGEST_DIR
    if configured:
        return Path(configured)
    return Path(getattr(settings, "VAR_DIR", Path(settings.BASE_DIR) / "var")) / "ingest"


class SelfHostedBackend(BroadcastBackend):
    name = "selfhosted"

    def __init__(self) -> None:
        # Per user, set while their input is connected (told by their CloudflareManager, which
        # runs in this process next to the relays).
        self._inputs: dict[str, asyncio.Event] = {}

    def unavailable(self) -> str | None:
        return nginx.unavailable()

    def server_url(self) -> str:
        conf = get_settings()
        return f"rtmp://{conf.RTMP_PUBLIC_HOST}:{conf.RTMP_PORT}/{nginx.APP}"

    async def stored_ingest(self, user_id: str) -> Ingest | None:
        from broadcast.models import account_pk

        if account_pk(user_id) is None:
            return None
        key = await run_db(lambda: self._stored_key(user_id))
        return Ingest(self.server_url(), key) if key else None

    async def ingest(self, user_id: str) -> Ingest:
        return Ingest(self.server_url(), await run_db(lambda: self._key(user_id, renew=False)))

    async def new_key(self, user_id: str) -> Ingest:
        key = await run_db(lambda: self._key(user_id, renew=True))
        await self._drop_publisher(user_id)
        return Ingest(self.server_url(), key)

    def _stored_key(self, user_id: str) -> str | None:
        """The user's key if they have a readable one; sync, on the broadcast DB thread."""
        from broadcast.models import StreamIngest, account_pk

        pk = account_pk(user_id)
        row = StreamIngest.objects.filter(user_id=pk, backend=self.name).first() if pk else None
        try:
            return row.key if row is not None else None
        except SecretError:  # unreadable (SECRETS_KEY changed): create_key replaces it
            return None

    def _key(self, user_id: str, renew: bool) -> str:
        """The user's key (a new one if ``renew`` or none yet); sync, on the broadcast DB thread."""
        from broadcast.models import StreamIngest, account_pk, new_stream_key

        pk = account_pk(user_id)
        if pk is None:
            raise BackendError("this account cannot stream (no such user)")
        row = StreamIngest.objects.filter(user_id=pk, backend=self.name).first()
        if row is not None and not renew:
            try:
                return row.key
            except SecretError:  # unreadable (SECRETS_KEY changed): a fresh key, as "New key" would
                logger.warning("[broadcast] ingest key of user %s unreadable; replaced", user_id)
        row = row or StreamIngest(user_id=pk, backend=self.name)
        key = new_stream_key()
        row.set_key(key)
        row.save()
        return key

    async def _drop_publisher(self, user_id: str) -> None:
        """Disconnect whoever publishes the user's stream (its key was just replaced)."""
        await ingest_control.request(
            nginx.control_socket(ingest_dir()),
            f"/control/drop/publisher?app={nginx.APP}&name={nginx.stream_name(user_id)}",
        )

    async def input_connected(self, user_id: str) -> bool:
        names = await ingest_control.publishing_now(nginx.control_socket(ingest_dir()))
        return names is not None and nginx.stream_name(user_id) in names

    def input_state_changed(self, user_id: str, connected: bool) -> None:
        event = self._inputs.setdefault(user_id, asyncio.Event())
        if connected:
            event.set()
        else:
            event.clear()

    def _input(self, user_id: str) -> asyncio.Event:
        return self._inputs.setdefault(user_id, asyncio.Event())

    async def run_output(
        self, user_id: str, spec: OutputSpec, report: Report, may_act: MayAct | None = None
    ) -> None:
        conf = get_settings()
        source = nginx.play_url(user_id, conf.RTMP_PORT)
        failures = 0
        try:
            while True:
                report(STARTING, None)
                await self._input(user_id).wait()
                started = time.monotonic()
                result = await relay.run_relay(user_id, source, spec, lambda: report(LIVE, None), may_act)
                if result.live_for >= HEALTHY_AFTER or time.monotonic() - started >= HEALTHY_AFTER:
                    failures = 0
                await asyncio.sleep(INPUT_SETTLE)
                if not self._input(user_id).is_set():
                    continue  # the publisher left: wait for it ("starting"), no failure
                failures += 1
                delay = retry_delay(failures, conf.RELAY_BACKOFF, conf.RELAY_BACKOFF_MAX)
                reason = f"{result.reason} (retrying in {delay:.1f}s)"
                report(FAILED, reason)  # the CloudflareManager logs "output <id> failed: <reason>"
                await asyncio.sleep(delay)
        finally:
            report(OFF, None)
