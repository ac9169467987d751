"""What a webhook body may hold, checked field by field; every refusal says why.

Accepted body (a JSON object, at most ALERT_MAX_BODY_BYTES):

  {"kind": "donation", "from": "Ana", "amount": 5, "currency": "EUR", "message": "gg"}

  kind      required, one of KINDS
  from      required, 1-64 characters after trimming, no control characters
  amount    a number > 0 and <= 1,000,000 (not a string, not a boolean); required
            for "donation" and "cheer", optional otherwise
  currency  optional, three letters (ISO 4217 style, upper-cased)
  message   optional, at most 500 characters, no control characters but newline/tab

Unknown fields are refused (400), not dropped: a sender with a typo ("ammount")
learns it at once instead of wondering why the overlay shows no amount.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

KINDS = ("donation", "follow", "subscription", "cheer", "raid")
NEEDS_AMOUNT = ("donation", "cheer")
FIELDS = ("kind", "from", "amount", "currency", "message")
MAX_FROM = 64
MAX_MESSAGE = 500
MAX_AMOUNT = 1_000_000
CURRENCY = re.compile(r"[A-Za-z]{3}")
# C0/C1 control characters (a newline in a name would forge lines in logs and overlays).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
CONTROL_IN_MESSAGE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


# A lone UTF-16 surrogate ("\\ud800" in JSON) is valid JSON but no text: it cannot be
# encoded to UTF-8 (Redis, the overlay) and would fail later, as a 5xx.
SURROGATE = re.compile(r"[\ud800-\udfff]")


class Invalid(ValueError):
    """A body the webhook refuses; str() is the message sent back.

    ``field`` names what was wrong in our own words (a field name from FIELDS, or
    "body"): the log line uses it, never the message, which may quote the sender.
    """

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


def parse(body: bytes) -> dict[str, Any]:
    """The alert's fields from a raw body; Invalid with a clear reason otherwise."""
    try:
        value = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise Invalid("body must be UTF-8 encoded JSON") from None
    except (ValueError, RecursionError):
        raise Invalid("body must be a JSON object") from None
    if not isinstance(value, dict):
        raise Invalid("body must be a JSON object")
    return validate(value)


def validate(data: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        names = ", ".join(repr(name)[:40] for name in unknown[:5])
        raise Invalid(f"unknown field(s): {names}; allowed: {', '.join(FIELDS)}", "fields")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise Invalid(f"kind must be one of: {', '.join(KINDS)}", "kind")
    alert: dict[str, Any] = {"kind": kind, "from": _text(data, "from", MAX_FROM, CONTROL, required=True)}
    if "amount" in data or kind in NEEDS_AMOUNT:
        alert["amount"] = _amount(data.get("amount"))
    if data.get("currency") is not None:
        currency = data["currency"]
        if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
            raise Invalid("currency must be a three-letter code such as EUR", "currency")
        alert["currency"] = currency.upper()
    message = _text(data, "message", MAX_MESSAGE, CONTROL_IN_MESSAGE, required=False)
    if message:
        alert["message"] = message
    return alert


def _text(data: dict[str, Any], name: str, limit: int, forbidden: re.Pattern[str], *, required: bool) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string", name)
    value = value.strip()
    if required and not value:
        raise Invalid(f"{name} must not be empty", name)
    if len(value) > limit:
        raise Invalid(f"{name} must be at most {limit} characters", name)
    if forbidden.search(value):
        raise Invalid(f"{name} must not contain control characters", name)
    if SURROGATE.search(value):
        raise Invalid(f"{name} must be valid Unicode text (a lone surrogate is not)", name)
    return value


def _amount(value: Any) -> int | float:
    # bool is an int in Python: refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid("amount must be a number", "amount")
    # Compared before isfinite(): a 4,000-digit integer is valid JSON, and converting it
    # to a float (isfinite does) raises OverflowError.
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid("amount must be a positive number", "amount")
    if value <= 0:
        raise Invalid("amount must be a positive number", "amount")
    if value > MAX_AMOUNT:
        raise Invalid(f"amount must be at most {MAX_AMOUNT:,}", "amount")
    return value
