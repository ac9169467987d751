"""Staff holds: a user's lease set to ``held-by-staff:<staff id>`` keeps their manager down.

A lease nobody renews as a worker is something every path already respects (a join
cannot acquire it, the tick's orphan claim skips it), so no other code has to know
about holds (livestream/worker/control.py puts them, a user's cleanup or next join
ends them).
"""

from __future__ import annotations

from livestream.conf import get_settings
from livestream.ownership.leases import HOLD_PREFIX, LeaseStore
from livestream.redis import run_script, script

# KEYS: lease. ARGV: me (the worker), hold value, ttl ms, hold prefix.
# Holds the lease unless another worker owns it; 1 if held.
_HOLD = script(
    "control.hold",
    """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] and string.sub(cur, 1, #ARGV[4]) ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
""",
)

# KEYS: lease. ARGV: hold prefix. Deletes the lease only if it is a hold; 1 if it was.
_RELEASE_HOLD = script(
    "control.release_hold",
    """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)


async def hold(leases: LeaseStore, user_id: str, by: str) -> bool:
    """Keep ``user_id``'s manager down; False if another worker owns it meanwhile."""
    ttl_ms = int(get_settings().STAFF_STOP_HOLD * 1000)
    keys = [leases.lease_key(user_id)]
    return bool(
        await run_script(leases.redis, _HOLD, keys, leases.worker_id, HOLD_PREFIX + by, ttl_ms, HOLD_PREFIX)
    )


async def release_hold(leases: LeaseStore, user_id: str) -> bool:
    """End a hold (no-op, and False, when the lease is a worker's or absent)."""
    return bool(await run_script(leases.redis, _RELEASE_HOLD, [leases.lease_key(user_id)], HOLD_PREFIX))
