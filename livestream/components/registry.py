"""The components a manager may run: a name -> class table the code declares.

A component is named by its class name ("ConsoleLogger", "AlertManager", ...).
LIVESTREAM["COMPONENTS"] and UserComponent rows hold such names, never dotted
paths: nothing is imported from a string a person typed (an admin form, an
environment variable, a database row). Only the paths below, and the ones
settings code adds with LIVESTREAM["EXTRA_COMPONENTS"] (a dict written in a
settings module; livestream/conf.py refuses a string, so it cannot come from the
environment), are ever imported, and only when first used.

Adding a component: one line in BUILTIN (livestream/components/builtin.py).
"""

from __future__ import annotations

import logging
from functools import cache

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from livestream.components.base import Component
from livestream.components.builtin import BUILTIN
from livestream.conf import get_settings

logger = logging.getLogger("livestream.presence_manager")


class UnknownComponent(LookupError):
    """A name that is not in the registry."""


def table() -> dict[str, str]:
    """Every registered name -> dotted path (the built-ins, then the settings' extras)."""
    return {**BUILTIN, **get_settings().EXTRA_COMPONENTS}


def names() -> list[str]:
    return list(table())


def choices() -> list[tuple[str, str]]:
    """(name, name) pairs for a model field / form select (evaluated on each use)."""
    return [(name, name) for name in table()]


def is_registered(name: str) -> bool:
    return name in table()


def get(name: str) -> type[Component]:
    """The class registered as ``name``; UnknownComponent if there is none."""
    path = table().get(name)
    if path is None:
        raise UnknownComponent(f"no component named {name!r} (registered: {', '.join(table())})")
    return _load(name, path)


@cache
def _load(name: str, path: str) -> type[Component]:
    # A path in the table is code, so a wrong one is a programming error: say so loudly.
    cls = import_string(path)
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        raise ImproperlyConfigured(f"component {name!r} ({path}) is not a livestream Component")
    if cls.__name__ != name:
        raise ImproperlyConfigured(f"component {name!r} ({path}) must be registered under its class name")
    return cls


_warned: set[str] = set()


def lookup(name: str) -> type[Component] | None:
    """The class named ``name``, or None with one log line per unknown name per process
    (a stored row naming a component this deployment does not have is skipped)."""
    try:
        return get(name)
    except UnknownComponent:
        if name not in _warned:
            _warned.add(name)
            logger.warning("[PresenceManager] unknown component %r skipped (not registered)", name)
        return None
