"""Where a user's stream is sent on to: their StreamOutput rows, plus registered sources.

``outputs_for(user_id)`` is the list the CloudflareManager relays to: the user's rows (ids
"<pk>") followed by what each registered source returns (issue 21's platforms register one
from their AppConfig.ready: ids like "twitch:<connection id>")::

    from broadcast.outputs import register_source
    register_source(my_outputs)      # async def my_outputs(user_id) -> list[OutputSpec]

A source that raises is logged (once per call, never with keys) and skipped: one broken
platform does not take the others down. A row whose key cannot be decrypted (SECRETS_KEY
changed) is returned disabled, with its name, so the page shows it and the user can re-enter it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from broadcast.backends.base import OutputSpec
from broadcast.db import run_db
from streampai import secrets

__all__ = ["OutputSpec", "Source", "outputs_for", "register_source", "row_outputs", "unregister_source"]

logger = logging.getLogger("broadcast.outputs")

Source = Callable[[str], Awaitable[list[OutputSpec]]]
_sources: list[Source] = []


def register_source(fn: Source) -> None:
    """Add a source of outputs (idempotent)."""
    if fn not in _sources:
        _sources.append(fn)


def unregister_source(fn: Source) -> None:
    if fn in _sources:
        _sources.remove(fn)


def _row_specs(user_id: str) -> list[OutputSpec]:
    from broadcast.models import StreamOutput, account_pk

    pk = account_pk(user_id)
    if pk is None:
        return []
    specs = []
    for row in StreamOutput.objects.filter(user_id=pk).order_by("id"):
        try:
            key, enabled = row.key, row.enabled
        except secrets.SecretError:
            logger.warning(
                "[broadcast] output %s of user %s: stored key unreadable; disabled", row.pk, user_id
            )
            key, enabled = "", False
        specs.append(OutputSpec(id=str(row.pk), name=row.name, url=row.url, key=key, enabled=enabled))
    return specs


async def row_outputs(user_id: str) -> list[OutputSpec]:
    """The user's StreamOutput rows as specs (keys decrypted), read on the broadcast DB thread."""
    from broadcast.models import account_pk

    if account_pk(user_id) is None:
        return []  # no account, no rows: not worth a trip to the DB thread
    return await run_db(lambda: _row_specs(user_id))


async def outputs_for(user_id: str) -> list[OutputSpec]:
    """Rows + every registered source's outputs, in that order."""
    specs = await row_outputs(user_id)
    for source in list(_sources):
        try:
            specs.extend(await source(user_id))
        except Exception as exc:
            logger.warning(
                "[broadcast] output source %s failed for user %s: %r",
                getattr(source, "__name__", source),
                user_id,
                type(exc).__name__,
            )
    return specs
