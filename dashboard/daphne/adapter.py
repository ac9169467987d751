"""The one place that reaches inside daphne, autobahn, Twisted (and Channels' session
wrapper): everything below the ASGI messages that a dashboard socket needs.

ASGI cannot say what the consumer needs here: closing with 1012 (daphne's own close
allows only 1000 and 3000-4999), pausing a flooding client's reads, capping the
kernel receive buffer, noticing a tab too slow for its events (bytes written but not
sent), and skipping the session wrappers on the push path. Also here: one fix to
autobahn's connect path (``lazy_autobahn_config_log``).

These are other projects' internals (autobahn and Twisted are pinned in
requirements.txt for that reason). ``check()`` looks at start for every attribute
used (REQUIREMENTS) and, if one is missing, switches off only the features that need
it and says so in ONE warning line::

    daphne adapter: switched off slow-tab close (twisted FileDescriptor._tempDataLen missing); ...

A switched-off feature degrades to what plain ASGI gives (no 1012: a 4012 close;
no pause: frames over the rate are only dropped; ...); nothing here raises, at import
or later, so neither daphne nor ``manage.py migrate`` can be stopped by an upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pprint
import socket
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from streampai.internals import SKIP, InternalsCheck, Requirements

logger = logging.getLogger("dashboard.daphne")

# Kernel receive buffer of a dashboard socket (bytes; see small_receive_buffer).
RECEIVE_BUFFER = 4 * 1024

# The features, by the name the warning line uses.
SLOW_TAB = "slow-tab close"
FLOOD_PAUSE = "flood pause"
SMALL_BUFFER = "small receive buffer"
RESTART_CLOSE = "1012 restart close"
LAZY_LOG = "lazy autobahn config log"
PUSH_PATH = "direct push path"


class _NoReactor:
    """Stands in for a reactor so a FileDescriptor can be made to look at (none is installed)."""


def _file_descriptor() -> Any:
    from twisted.internet.abstract import FileDescriptor

    return FileDescriptor(reactor=_NoReactor())  # type: ignore[arg-type]


def _autobahn_ws() -> Any:
    from autobahn.websocket.protocol import WebSocketProtocol

    return WebSocketProtocol


def _autobahn_options() -> Any:
    """The options each autobahn connection copies from its factory, as attributes."""
    from autobahn.websocket.protocol import WebSocketProtocol

    return type("options", (), dict.fromkeys(WebSocketProtocol.CONFIG_ATTRS_COMMON))


def _autobahn_module() -> Any:
    from autobahn.websocket import protocol

    return protocol


def _tcp_connection() -> Any:
    from twisted.internet.tcp import Connection

    return Connection


def _channels_wrapper() -> Any:
    """A session wrapper as Channels' SessionMiddleware makes one (it keeps ``real_send``)."""
    from channels.sessions import InstanceSessionWrapper

    return InstanceSessionWrapper({"type": "websocket", "cookies": {}}, None)


def _daphne_server() -> Any:
    """daphne's Server class, only where daphne is running (importing it installs a reactor)."""
    server = sys.modules.get("daphne.server")
    return getattr(server, "Server", None) if server is not None else SKIP  # not under daphne: not checked


# feature -> [(where the attribute lives, a function returning its owner, attribute)]
REQUIREMENTS: Requirements = {
    SLOW_TAB: [
        ("twisted FileDescriptor", _file_descriptor, "dataBuffer"),
        ("twisted FileDescriptor", _file_descriptor, "offset"),
        ("twisted FileDescriptor", _file_descriptor, "_tempDataLen"),
    ],
    FLOOD_PAUSE: [
        ("twisted FileDescriptor", _file_descriptor, "pauseProducing"),
        ("twisted FileDescriptor", _file_descriptor, "resumeProducing"),
    ],
    SMALL_BUFFER: [("twisted tcp.Connection", _tcp_connection, "getHandle")],
    RESTART_CLOSE: [
        ("autobahn WebSocketProtocol", _autobahn_ws, "sendCloseFrame"),
        ("autobahn WebSocketProtocol", _autobahn_ws, "STATE_CLOSED"),
        ("autobahn connection options", _autobahn_options, "closeHandshakeTimeout"),
        ("twisted FileDescriptor", _file_descriptor, "loseConnection"),
    ],
    LAZY_LOG: [
        ("autobahn.websocket.protocol", _autobahn_module, "pformat"),
        ("autobahn WebSocketProtocol", _autobahn_ws, "_connectionMade"),
    ],
    PUSH_PATH: [
        ("daphne Server", _daphne_server, "handle_reply"),
        ("channels InstanceSessionWrapper", _channels_wrapper, "real_send"),
    ],
}

_CHECK = InternalsCheck(
    REQUIREMENTS, logger, "daphne adapter", "daphne/autobahn/Twisted differ from the pinned versions"
)
# Look for every attribute of REQUIREMENTS once; log one line naming what is switched off.
check = _CHECK.check
enabled = _CHECK.enabled


# -- the socket's protocol ------------------------------------------------------


def daphne_send(send: Any) -> Any:
    """daphne's own ``send`` under an ASGI ``send``: daphne's is
    ``partial(server.handle_reply, protocol)``, wrapped by dashboard.admission's and
    Channels' session middleware (each keeps the callable it wraps as ``real_send``).
    None when not under daphne (the tests' communicator) or switched off."""
    if not enabled(PUSH_PATH):
        return None
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
    if transport is None or not enabled(SLOW_TAB):
        return 0
    buffered = getattr(transport, "dataBuffer", b"")
    size = len(buffered) - int(getattr(transport, "offset", 0) or 0)
    return max(0, size) + int(getattr(transport, "_tempDataLen", 0) or 0)


def pause_reading(protocol: Any, seconds: float, resumed: Callable[[], None]) -> bool:
    """Stop reading this socket for ``seconds`` (TCP then blocks the client), then call
    ``resumed``; False (and nothing done) if not possible here."""
    transport = getattr(protocol, "transport", None)
    if transport is None or not enabled(FLOOD_PAUSE):
        return False

    def resume() -> None:
        resumed()
        transport.resumeProducing()

    transport.pauseProducing()
    asyncio.get_running_loop().call_later(seconds, resume)
    return True


def small_receive_buffer(protocol: Any) -> None:
    """Cap the kernel's receive buffer of a dashboard socket at RECEIVE_BUFFER.

    A page sends a few tiny frames a minute; a client flooding frames would otherwise
    have daphne parse a 64 KiB read (thousands of frames) in one go while every other
    socket of the process waits. With 4 KiB (the kernel doubles it) a read is a few
    hundred frames at most (another user's ping during a flood: docs/benchmarks.md),
    and the frame rate limit pauses the rest. Larger frames still arrive, in more reads.
    """
    transport = getattr(protocol, "transport", None)
    if transport is None or not enabled(SMALL_BUFFER):
        return
    with contextlib.suppress(Exception):
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def close_for_restart(protocol: Any, code: int, reason: bytes) -> bool:
    """Send a close frame with ``code`` on the protocol itself; False if not possible here.

    autobahn drops a connection whose peer has not answered its close within
    closeHandshakeTimeout (1 s) with an RST, and an RST throws away what was not sent
    yet: a busy client could see its socket reset without the close frame (1006, not
    1012). So autobahn's timer is off for this close; the caller ends the connections
    still closing when it has waited enough (``end_closing``: a FIN, behind the frame)."""
    if protocol is None or not enabled(RESTART_CLOSE) or not hasattr(protocol, "sendCloseFrame"):
        return False
    protocol.closeHandshakeTimeout = 0
    protocol.sendCloseFrame(code=code, reasonUtf8=reason, isReply=False)
    return True


def end_closing(protocol: Any) -> None:
    """Close the connection after what was written to it (FIN, not RST), if it is still open."""
    transport = getattr(protocol, "transport", None)
    if transport is not None and enabled(RESTART_CLOSE) and not is_closed(protocol):
        transport.loseConnection()


def is_closed(protocol: Any) -> bool:
    """The closing handshake is over (or there is nothing to wait for)."""
    if protocol is None or not enabled(RESTART_CLOSE):
        return True
    return bool(getattr(protocol, "state", None) == getattr(protocol, "STATE_CLOSED", None))


# -- autobahn's connect path ------------------------------------------------------


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
    on: a measurable share of daphne's CPU over a burst of connects (docs/benchmarks.md).
    That one call site now gets a value formatted only when the line is written;
    every other use of pformat in autobahn is left as it is.
    """
    if not enabled(LAZY_LOG):
        return
    try:
        protocol = _autobahn_module()
        if getattr(protocol.pformat, "lazy_for", None) is not None:
            return
        real = protocol.pformat
        site = protocol.WebSocketProtocol._connectionMade.__code__
    except Exception:  # check() said it is there; anything else is not worth a failed start
        return

    def pformat(value: Any, *args: Any, **kwargs: Any) -> Any:
        if sys._getframe(1).f_code is site:
            return _Pformatted(value)
        return real(value, *args, **kwargs)

    pformat.lazy_for = site  # type: ignore[attr-defined]
    # Returns the lazy value (not a str) at that one site, which only formats it.
    protocol.pformat = pformat
