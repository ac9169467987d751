"""daphne's access log, redacted: daphne writes it straight to a stream, not through
logging, so the root handler's redaction (streampai/logredact.py) never sees it. This
wraps ``AccessLogGenerator.write_entry`` (one of daphne's internals: it lives here, below
ASGI, with the adapter) so a request path's secrets are masked before the line is written.
"""

from __future__ import annotations

import logging
from typing import Any

from streampai.logredact import redact

logger = logging.getLogger("dashboard.daphne")


def install() -> None:
    """Redact daphne's access log (idempotent). If daphne no longer has the method, one
    warning line says so (run daphne without --access-log then); nothing raises."""
    from daphne.access import AccessLogGenerator

    if getattr(AccessLogGenerator, "_streampai_redacts", False):
        return
    original = getattr(AccessLogGenerator, "write_entry", None)
    if original is None:
        logger.warning(
            "daphne adapter: switched off access-log redaction (daphne AccessLogGenerator.write_entry "
            "missing); do not pass --access-log to this daphne"
        )
        return

    def write_entry(self: Any, host: Any, date: Any, request: Any, *args: Any, **kwargs: Any) -> None:
        original(self, host, date, redact(str(request)), *args, **kwargs)

    AccessLogGenerator.write_entry = write_entry
    AccessLogGenerator._streampai_redacts = True
