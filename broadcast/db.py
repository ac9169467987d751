"""The broadcast side's database work, on a thread of its own.

Django's async ORM runs every query on the one "sync thread" of the process
(``sync_to_async(thread_sensitive=True)``), which the worker also uses to read each new
manager's component choice. A burst of thousands of manager starts would queue the
CloudflareManagers' reads (the ingest key, the outputs) in front of those choices. Here they
run on one dedicated thread instead (its own database connection): they queue among
themselves and never delay a manager's start.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broadcast-db")


def _with_connection(fn: Callable[[], T]) -> T:
    close_old_connections()  # a connection past CONN_MAX_AGE or broken is replaced, as per request
    return fn()


async def run_db(fn: Callable[[], T]) -> T:
    """``fn()`` (sync, ORM) on the broadcast database thread."""
    return await sync_to_async(_with_connection, thread_sensitive=False, executor=_executor)(fn)
