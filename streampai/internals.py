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

import logging
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


class InternalsCheck:
    """An adapter's ``check()`` and ``enabled(feature)``: its REQUIREMENTS looked for once
    (again with ``force``), and ONE warning line naming what is switched off and why."""

    def __init__(self, requirements: Requirements, logger: logging.Logger, adapter: str, cause: str) -> None:
        self.requirements, self.logger, self.adapter, self.cause = requirements, logger, adapter, cause
        self._off: dict[str, str] | None = None  # feature -> why; None until checked

    def check(self, *, force: bool = False) -> dict[str, str]:
        if self._off is not None and not force:
            return self._off
        off = self._off = missing_features(self.requirements)
        if off:
            self.logger.warning("%s: switched off %s (%s)", self.adapter, describe(off), self.cause)
        return off

    def enabled(self, feature: str) -> bool:
        return feature not in self.check()
