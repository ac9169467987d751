"""daphne below ASGI (dashboard/daphne/transport.py): autobahn's connect path."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.testing import StringTransport

from dashboard.daphne.adapter import lazy_autobahn_config_log


class Recorder:
    """Stands in for autobahn's txaio logger: keeps what each debug call was given."""

    def __init__(self) -> None:
        self.debug_calls: list[tuple[str, dict[str, Any]]] = []

    def debug(self, fmt: str, **kwargs: Any) -> None:
        self.debug_calls.append((fmt, kwargs))

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def test_the_config_dump_of_each_connection_is_formatted_only_if_logged():
    """autobahn pretty-printed ~40 config attributes on every connection for a debug line
    nobody reads (8.5% of daphne's CPU over a burst of connects). The value it logs is now
    formatted on demand, and reads the same when it is."""
    lazy_autobahn_config_log()  # done at startup (DashboardConfig.ready); idempotent
    factory = WebSocketServerFactory()
    factory.protocol = WebSocketServerProtocol  # Twisted's, as daphne's protocol is
    protocol = factory.buildProtocol(None)
    protocol.log = Recorder()
    protocol.makeConnection(StringTransport())
    [attrs] = [kw["attrs"] for fmt, kw in protocol.log.debug_calls if fmt == "\n{attrs}"]
    assert not isinstance(attrs, str)  # nothing formatted yet
    text = f"\n{attrs}"  # what the log line does with it
    assert "openHandshakeTimeout" in text and "WebSocketServerFactory" in text
