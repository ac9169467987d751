"""Issue 18: the user's stream ingest and the outputs it is sent on to (see docs/broadcast.md)."""
