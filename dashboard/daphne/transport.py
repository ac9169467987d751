"""daphne's side of a dashboard socket, below the ASGI messages: its protocol object,
the bytes it holds unsent, and the kernel receive buffer.

The consumer needs them for what ASGI cannot say: closing with 1012 (daphne's own
close allows only 1000 and 3000-4999), pausing a flooding client's reads, and
noticing a tab too slow for its events (dashboard/consumers.py). Also here: one
fix to autobahn's connect path (``lazy_autobahn_config_log``).
"""

from __future__ import annotations

import contextlib
import pprint
import socket
import sys
from functools import partial
from typing import Any

# Kernel receive buffer of a dashboard socket (bytes; see small_receive_buffer).
RECEIVE_BUFFER = 4 * 1024


def daphne_send(send: Any) -> Any:
    """daphne's own ``send`` under an ASGI ``send``: daphne's is
    ``partial(server.handle_reply, protocol)``, wrapped by dashboard.admission's and
    Channels' session middleware (each keeps the callable it wraps as ``real_send``).
    None when not under daphne (the tests' communicator)."""
    for _ in range(5):
        if isinstance(send, partial):
            return send
        send = getattr(getattr(send, "__self__", None), "real_send", None)
    return None


def daphne_protocol(send: Any) -> Any:
    """daphne's WebSocketProtocol behind an ASGI ``send`` (see daphne_send), or None."""
    inner = daphne_send(send)
    return inner.args[0] if inner is not None and inner.args else None


def unsent_bytes(protocol: Any) -> int:
    """Bytes written to this socket that the kernel has not taken yet (Twisted's buffers)."""
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return 0
    buffered = getattr(transport, "dataBuffer", b"")
    size = len(buffered) - int(getattr(transport, "offset", 0) or 0)
    return max(0, size) + int(getattr(transport, "_tempDataLen", 0) or 0)


def small_receive_buffer(protocol: Any) -> None:
    """Cap the kernel's receive buffer of a dashboard socket at RECEIVE_BUFFER.

    A page sends a few tiny frames a minute; a client flooding frames would otherwise
    have daphne parse a 64 KiB read (thousands of frames, ~100 ms of Python) in one
    go while every other socket of the process waits. With 4 KiB (the kernel doubles
    it) a read is a few hundred frames at most (measured during a flood: another
    user's ping round trip at most 7-36 ms in 3 runs; 92 ms with 16 KiB, 242 ms with the default), and the frame rate
    limit pauses the rest. Larger frames still arrive, in more reads.
    """
    sock = getattr(getattr(protocol, "transport", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


class _Pformatted:
    """``pprint.pformat(value)``, computed only if something formats it."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __format__(self, spec: str) -> str:
        return format(pprint.pformat(self.value), spec)

    def __str__(self) -> str:
        return pprint.pformat(self.value)


def lazy_autobahn_config_log() -> None:
    """Make autobahn's per-connection config dump cost nothing unless it is logged.

    autobahn's ``WebSocketProtocol._connectionMade`` pretty-prints its ~40 config
    attributes for a debug line on every connection, whether or not debug logging is
    on: 8.5% of daphne's CPU over a burst of connects (py-spy, docs/benchmarks.md).
    That one call site now gets a value formatted only when the line is written;
    every other use of pformat in autobahn is left as it is.
    """
    try:
        from autobahn.websocket import protocol
    except ImportError:  # not under daphne
        return
    if getattr(protocol.pformat, "lazy_for", None) is not None:
        return
    real = protocol.pformat
    site = protocol.WebSocketProtocol._connectionMade.__code__

    def pformat(value: Any, *args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_code is site:
            return _Pformatted(value)
        return real(value, *args, **kwargs)

    pformat.lazy_for = site  # type: ignore[attr-defined]
    # Returns the lazy value (not a str) at that one site, which only formats it.
    protocol.pformat = pformat  # type: ignore[assignment]
