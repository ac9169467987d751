"""User ids as they enter from outside: a URL, a channel-layer message, a browser.

Ids are Django primary keys, which are digits, but the app only relies on this:
1 to 64 characters of letters, digits, ``_`` and ``-``. Anything else is refused
where it enters, so no id can carry a newline (a forged log line), a ``:`` or
``|`` (the separators of Redis keys and expiry members) or a gigabyte of text.
"""

from __future__ import annotations

import re
from typing import TypeGuard

USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_user_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and USER_ID.fullmatch(value) is not None


def user_id(value: object, what: str = "user_id") -> str:
    """``value`` if it is a valid user id; ValueError naming it (as repr, never raw) otherwise."""
    if not is_user_id(value):
        raise ValueError(f"bad {what} {value!r:.80}")
    return value
