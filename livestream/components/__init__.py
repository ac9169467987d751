"""Per-user components supervised by a UserStreamManager.

A component is a small class that knows its user and has an async ``run``
method that runs until cancelled. See ``base.Component`` and the README.
"""

from livestream.components.base import CommandError, Component

__all__ = ["CommandError", "Component"]
