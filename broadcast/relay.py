"""One relay: ``ffmpeg -c copy`` from the ingest to one output, as a child of the worker.

No re-encoding (``-c copy``): the relay costs a few percent of one core per output and adds
no quality loss. The child gets PR_SET_PDEATHSIG=SIGKILL (broadcast/procs.py), so a worker
killed with kill -9 takes its relays with it: the worker that takes the user over starts
new ones, and a receiver never has two publishers of ours at once.

A worker that is *frozen* (SIGSTOP, a paused VM) does not die, so the relays are fenced
too (issue 19; livestream/ownership/fencing.py): none starts unless ``may_act()``; each is
registered with ``register_external_effect`` (the lease keeper kills it EFFECT_STOP_MARGIN
before an unrenewed lease lapses, or at once when the lease is lost), and with the relay
warden (broadcast/warden.py), a separate process that kills it by itself at that same
deadline when the whole worker is frozen. The kills go through a pidfd, never a bare pid
that another process may have reused once the relay was reaped.

``run_relay`` runs one ffmpeg until it exits and says why; the retrying, the backoff and the
state reported to the page are the backend's (broadcast/backends/selfhosted.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from broadcast.backends.base import MayAct, OutputSpec
from broadcast.procs import set_pdeathsig
from broadcast.warden import WARDEN
from livestream.ownership import fencing
from streampai import secrets

logger = logging.getLogger("broadcast.relay")

# A stalled input or output (no byte moved) ends the relay after this long (seconds).
IO_TIMEOUT = 5.0
# A cancelled relay gets SIGTERM, then SIGKILL after this long (seconds).
STOP_GRACE = 1.0
# While this worker may no longer act (its lease may lapse), a relay waits this long
# between looks (seconds); the worker's fence cancels it meanwhile if the lease is gone.
MAY_ACT_POLL = 0.1


@lru_cache(maxsize=1)
def ffmpeg() -> str:
    """The static ffmpeg of the imageio-ffmpeg wheel (rtmp, rtmps, libx264, aac)."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def _die_with_parent() -> None:
    set_pdeathsig(signal.SIGKILL)


def relay_command(source: str, target: str) -> list[str]:
    return [
        ffmpeg(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-rw_timeout",
        str(int(IO_TIMEOUT * 1_000_000)),
        # The ingest sends onMetaData and the codec headers first, so the streams are known
        # at once: no probing (measured: first packet out after ~0.7 s instead of ~1.7 s,
        # both streams found in 10 of 10 tries; the tests check the audio arrives).
        "-analyzeduration",
        "0",
        "-probesize",
        "32768",
        "-i",
        source,
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "flv",
        "-flvflags",
        "no_duration_filesize",
        "-progress",
        "pipe:1",
        "-stats_period",
        "0.5",
        target,
    ]


@dataclass
class RelayExit:
    returncode: int | None
    reason: str  # for the page and the log: never a key
    live_for: float  # seconds it was sending (0: never got going)
    frames: int


_ADDR = re.compile(r"\[[\w/#:.-]+ @ 0x[0-9a-f]+\]\s*")


def clean_reason(line: str, spec: OutputSpec) -> str:
    """An ffmpeg error line fit for the page and the log: without the target URL or key."""
    line = _ADDR.sub("", line).strip()
    for secret in sorted({spec.target(), spec.url, spec.key}, key=len, reverse=True):
        if secret:
            line = line.replace(secret, secrets.mask(secret) if secret == spec.key else "<output>")
    return line[:200] or "relay exited"


def fence(user_id: str, proc: asyncio.subprocess.Process, may_act: MayAct) -> Callable[[], None]:
    """Have the relay killed before ``user_id``'s lease can lapse (the keeper thread, and the
    warden when the worker is frozen); returns what to call once it has ended."""
    relay_id = WARDEN.add(proc.pid)

    def kill() -> None:  # from the keeper's thread
        if relay_id is not None:
            WARDEN.kill(relay_id)
        elif proc.returncode is None:  # no pidfds here: the best a bare pid allows
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    unregister = fencing.register_external_effect(user_id, kill)
    if not may_act():
        # The deadline passed while it started: the keeper may have stopped the others
        # before this one was registered.
        kill()

    def ended() -> None:
        unregister()
        if relay_id is not None:
            WARDEN.remove(relay_id)

    return ended


async def run_relay(
    user_id: str, source: str, spec: OutputSpec, on_live: Callable[[], None], may_act: MayAct | None = None
) -> RelayExit:
    """Relay ``source`` to ``spec`` until ffmpeg exits; ``on_live()`` once frames flow.
    Cancelled: stops ffmpeg (SIGTERM, then SIGKILL after STOP_GRACE) before re-raising.
    Starts only while ``may_act()`` (default: this worker may act for ``user_id``); it waits
    until then. The CloudflareManager passes its own, which stays false once it was stopped:
    a relay task whose cancel was lost then never starts a second publisher beside the next
    run's relay (it waits, doing nothing, until livestream.tasks.keep_cancelling ends it)."""
    gate = may_act or (lambda: fencing.may_act(user_id))
    # The gate opens on the keeper's thread (a renewal that reached Redis): no event to await.
    while not gate():  # noqa: ASYNC110
        await asyncio.sleep(MAY_ACT_POLL)
    proc = await asyncio.create_subprocess_exec(
        *relay_command(source, spec.target()),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    ended = fence(user_id, proc, gate)
    errors: deque[str] = deque(maxlen=5)
    frames = 0
    live_at: float | None = None

    async def read_errors() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            text = raw.decode(errors="replace").strip()
            if text:
                errors.append(text)

    async def read_progress() -> None:
        nonlocal frames, live_at
        assert proc.stdout is not None
        async for raw in proc.stdout:
            if raw.startswith(b"frame="):
                with contextlib.suppress(ValueError):
                    frames = int(raw[6:].strip() or 0)
                if frames > 0 and live_at is None:
                    live_at = time.monotonic()
                    on_live()

    readers = [asyncio.create_task(read_errors()), asyncio.create_task(read_progress())]
    try:
        returncode = await proc.wait()
        await asyncio.wait(readers, timeout=1.0)
    except asyncio.CancelledError:
        await stop(proc)
        raise
    finally:
        for task in readers:
            task.cancel()
        ended()
    live_for = time.monotonic() - live_at if live_at is not None else 0.0
    reason = clean_reason(errors[-1], spec) if errors else f"relay exited with status {returncode}"
    return RelayExit(returncode, reason, live_for, frames)


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (ffmpeg closes the output cleanly), SIGKILL after STOP_GRACE."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), STOP_GRACE)
    except TimeoutError:
        pass
    finally:
        # Past the grace, or cancelled again while waiting (keep_cancelling): never left running.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()
