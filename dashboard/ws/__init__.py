"""The presence WebSocket's parts: handshake checks, admission, limits, commands, the hub, the tracker."""
