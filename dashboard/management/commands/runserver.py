"""``manage.py runserver``: daphne's, plus the embedded Redis (dashboard/daphne/runserver.py)."""

from dashboard.daphne.runserver import Command

__all__ = ["Command"]
