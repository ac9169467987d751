"""Timers kept in Redis, delivered when due; the cleanup timer's worker side."""
