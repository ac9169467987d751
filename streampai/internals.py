"""Another project's internals, looked for once at start (the daphne and redis adapters).

An adapter that reaches into a library's private attributes lists them as REQUIREMENTS,
``feature -> [(where, a function returning the attribute's owner, attribute name)]``, and
asks ``missing_features`` which features must be switched off. An owner function that
raises (an import that fails) counts as a missing attribute; one returning SKIP is not
checked (e.g. daphne's server class outside daphne). The adapter writes ONE warning line
naming everything switched off, so an upgrade that renames an internal degrades a feature
and says so, rather than stopping a process or failing silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Requirements = dict[str, list[tuple[str, Callable[[], Any], str]]]


class SKIP:
    """An owner function's answer for "not checked here"."""


def missing_features(requirements: Requirements) -> dict[str, str]:
    """feature -> why it is switched off, for each feature one of whose attributes is missing."""
    off: dict[str, str] = {}
    for feature, needs in requirements.items():
        for where, owner_of, name in needs:
            try:
                owner = owner_of()
                if owner is SKIP:
                    continue
                missing = owner is None or not hasattr(owner, name)
            except Exception as exc:  # an import that fails is the same thing as a missing attribute
                off[feature] = f"{where} unavailable: {exc!r}"
                break
            if missing:
                off[feature] = f"{where}.{name} missing"
                break
    return off


def describe(off: dict[str, str]) -> str:
    """The switched-off features for the one warning line."""
    return "; ".join(f"{feature} ({why})" for feature, why in off.items())
