"""Who a socket belongs to: the WebSocket auth cache, sessions ending, impersonation."""
