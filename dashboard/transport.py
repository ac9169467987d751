"""daphne's side of a dashboard socket, below the ASGI messages: its protocol object,
the bytes it holds unsent, and the kernel receive buffer.

The consumer needs them for what ASGI cannot say: closing with 1012 (daphne's own
close allows only 1000 and 3000-4999), pausing a flooding client's reads, and
noticing a tab too slow for its events (dashboard/consumers.py).
"""

from __future__ import annotations

import contextlib
import socket
from functools import partial
from typing import Any

# Kernel receive buffer of a dashboard socket (bytes; see small_receive_buffer).
RECEIVE_BUFFER = 4 * 1024


def daphne_protocol(send: Any) -> Any:
    """daphne's WebSocketProtocol behind an ASGI ``send``: daphne's is
    ``partial(server.handle_reply, protocol)``, wrapped by dashboard.admission's and
    Channels' session middleware (each keeps the callable it wraps as ``real_send``).
    None when not under daphne (the tests' communicator)."""
    for _ in range(5):
        if isinstance(send, partial):
            return send.args[0] if send.args else None
        send = getattr(getattr(send, "__self__", None), "real_send", None)
    return None


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
