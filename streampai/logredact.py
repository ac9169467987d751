"""Secrets never reach a log: one place that knows what they look like and masks them.

Every log line of the app (Django's, the app's, daphne's loggers) goes through the
root handler, whose filter and formatter (settings.LOGGING) run ``redact``; daphne's
access log is not a logger (daphne writes it straight to a stream), so
dashboard/daphne/accesslog.py wraps daphne's AccessLogGenerator to redact the path
before it is written (streampai/asgi.py installs it, so every daphne does).

What is masked (each secret keeps what identifies it, loses what grants something):

  /hooks/alerts/3/<secret>/       -> /hooks/alerts/3/***/       the alert webhook (issue 11)
  /live/<stream key>              -> /live/***                  an RTMP ingest path
  rtmp(s)://host/app/<stream key> -> rtmp(s)://host/app/***     an RTMP(S) URL with its key
  oauth:<token>                   -> oauth:***                  Twitch chat's PASS form
  access_token=<t>, key=<k>, ...  -> access_token=***, ...      query strings and forms
  Bearer <token>                  -> Bearer ***                 an Authorization value

Add a form with ``register(pattern, replacement, trigger)`` next to the code that creates the
secret (at import time), rather than masking at each log call.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

_PATTERNS: list[tuple[re.Pattern[str], str]] = []
# Literal text that every secret's form contains: most lines (a worker logs 10,000 a
# second at capacity) contain none of it, and are not run through each pattern.
_TRIGGERS: set[str] = set()


def register(pattern: str, replacement: str, *triggers: str) -> None:
    """Mask every match of ``pattern`` in log lines (``replacement`` may use groups).
    ``triggers``: literal strings, one of which is in every text that ``pattern`` matches."""
    if not triggers:
        raise ValueError("register() needs the literal text every match contains")
    _PATTERNS.append((re.compile(pattern), replacement))
    _TRIGGERS.update(triggers)


# A path segment / token: anything up to a separator a log line or URL would use.
_SEGMENT = r"[^/\s\"'?#&]+"
register(rf"(/hooks/alerts/{_SEGMENT}/){_SEGMENT}", rf"\g<1>{MASK}", "/hooks/alerts/")
register(rf"(/live/){_SEGMENT}", rf"\g<1>{MASK}", "/live/")
register(rf"(rtmps?://[^/\s\"']+/{_SEGMENT}/){_SEGMENT}", rf"\g<1>{MASK}", "://")
register(r"(oauth:)[A-Za-z0-9_\-.]+", rf"\g<1>{MASK}", "oauth:")
register(
    r"(?i)\b(access_token|refresh_token|client_secret|stream_?key|streamkey|key|token|secret|password)"
    r"=[^&\s\"']+",
    rf"\g<1>={MASK}",
    "=",
)
register(r"(?i)(\bBearer\s+)[A-Za-z0-9_\-.~+/=]+", rf"\g<1>{MASK}", "earer", "EARER")


def redact(text: str) -> str:
    if not any(trigger in text for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactFilter(logging.Filter):
    """Rewrites a record's message (formatted with its args) with the secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let logging report it as usual
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class RedactingFormatter(logging.Formatter):
    """The formatted line, tracebacks included, with the secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
