"""The dashboard app: the pages, and the WebSocket that tracks presence while one is open."""
