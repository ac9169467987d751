"""The Lua twin of livestream/ownership/policy.py's grant rules, composed into the scripts.

A lease is granted inside one script (read, check, write, atomically), so the rules
that decide it run in Lua there. They are written once, here, as Lua functions that
mirror the Python functions of the same name line for line; the scripts in
livestream/ownership/leases.py only read the facts, call these, and write.
tests/test_policy.py runs one table of cases through both sides (the Lua against a
private redis-server), so a change to one that is not made to the other fails.

``GRANTS`` also holds the one copy of the epoch guard (``may_grant``) and the token
rule (``grant``): every grant of a lease (acquire, placement, orphan claim) goes
through them.
"""

from __future__ import annotations

# policy.grants_open, claimable, least_loaded, fair_share.
POLICY = """
local function grants_open(known, current, on_hold)
  return known ~= '' and current == known and not on_hold
end
local function claimable(user, owner, rebuilt, dead, holds_end, hold_prefix)
  local nobody_runs = (not owner) or (holds_end and string.sub(owner, 1, #hold_prefix) == hold_prefix) or dead(owner)
  return nobody_runs and not rebuilt(user)
end
local function least_loaded(loads)
  local best = 1
  for j = 2, #loads do if loads[j] < loads[best] then best = j end end
  return best
end
local function fair_share(present, live, running, orphans)
  local fair = math.ceil(present / math.max(1, live))
  return math.min(orphans, math.max(1, fair - running))
end
"""

# The guard every grant passes (docs/reliability.md says why):
#
# master_changed: Redis names each master's replication history (``master_replid``);
#   a replica promoted by a failover or switchover, or a restarted server, has a new
#   one. The first script to run on a new master records it and puts the epoch hold
#   on for ``hold_ms``: no lease is granted meanwhile, while the owners, whose last
#   renewals may have gone to the old master and be missing here, take their leases
#   back by renewing (or fence themselves for want of it).
# may_grant: the epoch guard (policy.grants_open) on what Redis holds now.
#
# grant: sets the lease and gives it the user's next fencing token: one more than the
#   last, and never less than Redis' clock in microseconds. The counter alone can go
#   back (a failover loses the last writes, a restart without persistence loses all);
#   the clock does not, across servers whose clocks agree better than the epoch hold.
GRANTS = (
    POLICY
    + """
local function master_changed(epoch_key, hold_key, hold_ms)
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  local seen = redis.call('GET', epoch_key .. ':master')
  if seen == replid then return false end
  redis.call('SET', epoch_key .. ':master', replid)
  if not seen then return false end
  redis.call('SET', hold_key, '1', 'PX', hold_ms)
  return true
end
local function may_grant(epoch_key, hold_key, known, hold_ms)
  if master_changed(epoch_key, hold_key, hold_ms) then return false end
  return grants_open(known, redis.call('GET', epoch_key), redis.call('EXISTS', hold_key) == 1)
end
local function grant(lease, owner, ttl_ms, token_key)
  redis.call('SET', lease, owner, 'PX', ttl_ms)
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local token = string.format('%.0f', math.max(tonumber(redis.call('GET', token_key) or '0') + 1, clock))
  redis.call('SET', token_key, token)
  return token
end
"""
)
