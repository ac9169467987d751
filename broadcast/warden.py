"""The relay warden: a frozen worker's relays stop by themselves before its lease can lapse.

A relay (broadcast/relay.py) is an ffmpeg child of the worker. PR_SET_PDEATHSIG kills it
when the worker dies, and the lease keeper thread kills it EFFECT_STOP_MARGIN before an
unrenewed lease lapses (livestream/ownership/fencing.py). Neither helps when the worker is
*frozen* (SIGSTOP, a paused process, a stuck kernel call): its threads do not run, its
relays keep publishing, its lease lapses, another worker takes the user over and starts its
own relays: a receiver gets two publishers.

So each worker process that relays has one small warden process (started with its first
relay; a child with PDEATHSIG, so kill -9 of the worker takes it too). It holds

* the deadline: the moment (CLOCK_MONOTONIC, which on Linux is one clock for every
  process of the machine and never steps, unlike the wall clock) by which the worker's
  external effects must have stopped: EffectGate's deadline, sent again after every lease
  renewal from the keeper thread (``GATE.on_renewed``), one message, never blocking;
* a pidfd of every running relay (passed over the socket with SCM_RIGHTS): it signals the
  very process it was given, never another one that reused its pid.

When the deadline passes, the warden SIGKILLs every relay it holds. A healthy worker renews
every RECONCILE_INTERVAL and moves the deadline on long before (conf.validate checks
EFFECT_STOP_MARGIN < LEASE_TTL - RECONCILE_INTERVAL), so only a worker that could not renew
(frozen, or cut off from Redis, when its keeper stops the relays too) loses them.

The protocol (one SOCK_SEQPACKET message each, ASCII): ``d <deadline>`` (a float, ``inf``:
none), ``+ <id>`` with one pidfd attached (watch this relay), ``- <id>`` (it ended). End of
file (the worker is gone): every relay is killed and the warden exits.

This module imports only the standard library at the top: ``python -m broadcast.warden``
starts in a few tens of milliseconds and needs no Django.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

PREFIX = "[relay-warden]"
_PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_MESSAGE = 128


def pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (Linux >= 5.3), None where there is none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def kill_pidfd(fd: int) -> bool:
    """SIGKILL the process ``fd`` refers to; False if it had already ended."""
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


# -- the warden process -----------------------------------------------------------------------


class Watch:
    """The warden's state: the deadline and the relays' pidfds (pure, for the loop below)."""

    def __init__(self) -> None:
        self.deadline = math.inf
        self.relays: dict[str, int] = {}

    def message(self, data: bytes, fds: list[int]) -> None:
        kind, _, arg = data.decode("ascii", errors="replace").partition(" ")
        if kind == "d":
            with contextlib.suppress(ValueError):
                self.deadline = float(arg)
        elif kind == "+" and fds:
            self.forget(arg)
            self.relays[arg] = fds.pop(0)
        elif kind == "-":
            self.forget(arg)
        for fd in fds:  # not ours to keep
            os.close(fd)

    def forget(self, relay_id: str) -> None:
        fd = self.relays.pop(relay_id, None)
        if fd is not None:
            os.close(fd)

    def timeout(self, now: float) -> float | None:
        """How long select may wait: until the deadline while a relay runs, else forever."""
        if not self.relays or math.isinf(self.deadline):
            return None
        return max(0.0, self.deadline - now)

    def expire(self, now: float) -> int:
        """Past the deadline: kill every relay; how many were still running."""
        if not self.relays or now < self.deadline:
            return 0
        killed = sum(kill_pidfd(fd) for fd in self.relays.values())
        for relay_id in list(self.relays):
            self.forget(relay_id)
        return killed

    def kill_all(self) -> int:
        self.deadline = -math.inf
        return self.expire(time.monotonic())


def serve(sock: socket.socket) -> None:
    watch = Watch()
    while True:
        ready, _, _ = select.select([sock], [], [], watch.timeout(time.monotonic()))
        if ready:
            try:
                data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 4)
            except OSError:
                data, fds = b"", []
            if not data:  # the worker is gone (or closed us): its relays go too
                killed = watch.kill_all()
                if killed:
                    print(f"{PREFIX} worker gone: killed {killed} relays", file=sys.stderr, flush=True)
                return
            watch.message(data, list(fds))
        late = time.monotonic() - watch.deadline
        killed = watch.expire(time.monotonic())
        if killed:
            print(
                f"{PREFIX} lease deadline passed {late:.3f}s ago (worker {os.getppid()} frozen or cut off): "
                f"killed {killed} relays",
                file=sys.stderr,
                flush=True,
            )


def main() -> None:
    # PR_SET_PDEATHSIG was set by the worker between fork and exec (it survives exec).
    serve(socket.socket(fileno=sys.stdin.fileno()))


# -- the worker's side --------------------------------------------------------------------------


def _die_with_parent() -> None:
    from broadcast.procs import set_pdeathsig

    set_pdeathsig(signal.SIGKILL)


class RelayWarden:
    """The worker's handle on its warden: started with the first relay (from the event loop's
    thread: PDEATHSIG follows the thread that forked), told every relay and every deadline.

    Every send is non-blocking: a full socket (a warden stuck for seconds) drops the message
    with a count, it never stalls the lease keeper."""

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "broadcast.warden"]
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._relays: dict[str, int] = {}  # id -> the worker's own pidfd (dup'ed to the warden)
        self._next = 0
        self._stop_listening: Callable[[], None] | None = None
        self.dropped = 0

    def add(self, pid: int) -> str | None:
        """Watch relay ``pid`` (just started, not reaped); its id for ``remove``, or None if
        this system has no pidfds (then only the keeper thread stops relays)."""
        fd = pidfd(pid)
        if fd is None:
            return None
        self._ensure_started()
        with self._lock:
            relay_id, self._next = f"{pid}.{self._next}", self._next + 1
            self._relays[relay_id] = fd
            self._send(f"+ {relay_id}".encode(), [fd])
        return relay_id

    def remove(self, relay_id: str) -> None:
        with self._lock:
            fd = self._relays.pop(relay_id, None)
            if fd is not None:
                os.close(fd)
                self._send(f"- {relay_id}".encode())

    def kill(self, relay_id: str) -> None:
        """SIGKILL the relay now (thread-safe: the lease keeper calls it); nothing if it ended
        (its pidfd is closed under the same lock, so a reused number is never signalled)."""
        with self._lock:
            fd = self._relays.get(relay_id)
            if fd is not None:
                kill_pidfd(fd)

    def deadline(self, deadline: float) -> None:
        """The keeper renewed (or stopped): the new deadline (time.monotonic())."""
        with self._lock:
            self._send(f"d {deadline!r}".encode())

    def stop(self) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        if self._proc is not None:
            self._proc.wait(5)

    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _ensure_started(self) -> None:
        from livestream.ownership import fencing

        if self._stop_listening is None:
            self._stop_listening = fencing.GATE.on_renewed(self.deadline)
        if self._proc is not None and self._proc.poll() is None and self._sock is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if self._proc is not None and self._proc.poll() is not None:
            logging.getLogger("broadcast.relay").warning(
                "%s exited with status %s; starting another", PREFIX, self._proc.returncode
            )
        proc = subprocess.Popen(
            self.command,
            stdin=theirs.fileno(),
            preexec_fn=_die_with_parent,
            close_fds=True,
            cwd=_PROJECT,  # -m finds the package whatever the worker's working directory
        )
        theirs.close()
        ours.setblocking(False)
        with self._lock:
            if self._sock is not None:
                self._sock.close()
            self._sock, self._proc = ours, proc
            # A new warden (the first, or one that died) learns everything at once.
            self._send(f"d {fencing.GATE.deadline!r}".encode())
            for relay_id, fd in self._relays.items():
                self._send(f"+ {relay_id}".encode(), [fd])

    def _send(self, data: bytes, fds: list[int] | None = None) -> None:
        """Under the lock. Never blocks; a message that does not fit is dropped and counted."""
        if self._sock is None:
            return
        try:
            socket.send_fds(self._sock, [data], fds or [])
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1:  # once: the warden is stuck (it reads within microseconds)
                logging.getLogger("broadcast.relay").warning("%s not reading: a message dropped", PREFIX)
        except OSError:  # the warden died: the next relay starts another
            self._sock.close()
            self._sock = None


WARDEN = RelayWarden()


if __name__ == "__main__":
    main()
