"""Who runs each user's manager: the pure policy, the leases in Redis, their keeper, liveness."""
