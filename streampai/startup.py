"""Stop a process at start, with one clear line, when its configuration is wrong.

A malformed REDIS_URL or DATABASE_URL, a weak SECRET_KEY in production or
inconsistent LIVESTREAM values raise ImproperlyConfigured while settings load or
Django sets up. Left alone that is a traceback in manage.py, and in daphne it
happened per socket (or, for Redis, the worker retried for ever). manage.py and
streampai/asgi.py run their start-up inside ``exit_on_bad_configuration()``,
which turns it into one line on stderr and exit status 2. A Redis that is merely
down is not a configuration error: nothing here connects to it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ImproperlyConfigured

EXIT_STATUS = 2
PREFIX = "streampai: configuration error:"


@contextmanager
def exit_on_bad_configuration() -> Iterator[None]:
    try:
        yield
    except ImproperlyConfigured as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message
        print(f"{PREFIX} {message}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STATUS) from None
