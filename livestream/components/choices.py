"""Which components a user's manager runs, and changing that while it runs.

The settings' COMPONENTS are everybody's default. A user's rows in
livestream.models.UserComponent adjust it: ``enabled=True`` adds a component the
defaults lack, ``enabled=False`` removes one of them. A user with no rows runs the
defaults.

  for_user(user_id)   (worker) the classes to run; batched: a burst of starts reads
                      the rows of up to BATCH users in one query, on a thread
  notify(user_id, component=None)
                      (web, sync; post_save/post_delete of a row, after commit)
                      {"type": "component.config", "user_id": "7"} to the worker channel;
                      with ``component`` ({"component": "PlatformSupervisor"}) the message
                      also tells that running component its own configuration changed
                      (the owner calls its ``reconfigure()``)

The worker's owner of the user applies a new choice to the running manager (only the
changed components start or stop): livestream/worker/control.py ``reconfigure``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from livestream.components import registry
from livestream.components.base import Component
from livestream.conf import get_settings
from livestream.tasks import per_loop

logger = logging.getLogger("livestream.presence_manager")

CONFIG = "component.config"
BATCH = 500


def resolve(defaults: Iterable[str], rows: dict[str, bool]) -> list[str]:
    """The names to run: ``defaults`` in order minus the disabled, then the enabled extras."""
    chosen = [name for name in defaults if rows.get(name, True)]
    return chosen + [name for name, enabled in sorted(rows.items()) if enabled and name not in chosen]


def load_class(name: str) -> type[Component] | None:
    """The registered class named ``name``; None (logged once per name) if there is none.
    Never imports ``name`` itself: a stored row is data, not code."""
    return registry.lookup(name)


def classes(names: Iterable[str]) -> list[type[Component]]:
    return [cls for cls in map(load_class, names) if cls is not None]


def _rows(user_ids: list[str]) -> dict[str, dict[str, bool]]:
    """UserComponent rows of ``user_ids``: user -> {name: enabled} (one query)."""
    from livestream.models import UserComponent

    pks = [int(u) for u in user_ids if u.isdigit()]
    found: dict[str, dict[str, bool]] = {u: {} for u in user_ids}
    for user_pk, name, enabled in UserComponent.objects.filter(user_id__in=pks).values_list(
        "user_id", "name", "enabled"
    ):
        found.setdefault(str(user_pk), {})[name] = enabled
    return found


class _Loader:
    """Collects the users whose rows are asked for meanwhile and reads them in one query."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[asyncio.Future[dict[str, bool]]]] = {}
        self.task: asyncio.Task[None] | None = None

    async def rows(self, user_id: str) -> dict[str, bool]:
        future: asyncio.Future[dict[str, bool]] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(user_id, []).append(future)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let the rest of a burst queue up first
        while self.waiting:
            batch = dict(list(self.waiting.items())[:BATCH])
            for user_id in batch:
                del self.waiting[user_id]
            try:
                found = await database_sync_to_async(_rows)(list(batch))
            except Exception as exc:
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            for user_id, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(user_id, {}))


_loader = per_loop(_Loader)


async def for_user(user_id: str) -> list[type[Component]]:
    """The component classes ``user_id``'s manager runs (database errors raise)."""
    rows = await _loader().rows(user_id)
    return classes(resolve(get_settings().COMPONENTS, rows))


# -- web side ------------------------------------------------------------------------


def notify(user_id: str, component: str | None = None) -> None:
    """Tell the workers that ``user_id``'s choice changed (sync: model signals); with
    ``component``, that this component's own configuration (e.g. its rows) changed too."""
    message = {"type": CONFIG, "user_id": str(user_id)}
    if component:
        message["component"] = component
    try:
        async_to_sync(get_channel_layer().send)(get_settings().WORKER_CHANNEL, message)
    except Exception as exc:  # Redis down: the user's next manager start reads the rows anyway
        logger.warning("[PresenceManager] component change of %s not announced: %r", user_id, exc)
