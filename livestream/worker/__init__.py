"""The presence-manager worker: runworker, its feed, the scheduler (PresenceManager), local managers."""
