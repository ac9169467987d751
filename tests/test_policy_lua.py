"""The Lua twin of the grant rules (livestream/ownership/policy_lua.py) decides every case of
tests/test_policy.py as the Python does, on the suite's private redis-server: the scripts
that apply the rules atomically apply the same policy."""

from __future__ import annotations

from livestream.ownership import policy
from livestream.ownership.policy_lua import POLICY
from tests.test_policy import CLAIMABLE, FAIR_SHARE, GRANTS_OPEN, HOLD, LEAST_LOADED, claimable_py

_HARNESS = (
    POLICY
    + """
local kind = ARGV[1]
if kind == 'claimable' then
  local calls = {0, 0}
  local function rebuilt(user) calls[1] = calls[1] + 1 return user == 'u1' and ARGV[3] == '1' end
  local function dead(_) calls[2] = calls[2] + 1 return ARGV[4] == '1' end
  local owner = ARGV[2] ~= '' and ARGV[2] or false
  return {claimable('u1', owner, rebuilt, dead, ARGV[5] == '1', ARGV[6]) and 1 or 0, calls[1], calls[2]}
elseif kind == 'grants_open' then
  local current = ARGV[3] ~= '' and ARGV[3] or false
  return grants_open(ARGV[2], current, ARGV[4] == '1') and 1 or 0
elseif kind == 'least_loaded' then
  local loads = {}
  for i = 2, #ARGV do loads[i - 1] = tonumber(ARGV[i]) end
  return least_loaded(loads) - 1
elseif kind == 'fair_share' then
  return fair_share(tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]))
end
"""
)


def flag(value: bool) -> str:
    return "1" if value else "0"


async def test_the_lua_twin_decides_every_case_as_the_python_does(aredis):
    lua = aredis.register_script(_HARNESS)
    for (owner, rebuilt, dead, holds_end), _ in CLAIMABLE:
        got = await lua(args=["claimable", owner or "", flag(rebuilt), flag(dead), flag(holds_end), HOLD])
        result, rebuilt_calls, dead_calls = claimable_py(owner, rebuilt, dead, holds_end)
        assert [int(x) for x in got] == [int(result), rebuilt_calls, dead_calls], (owner, rebuilt, dead)
    for (known, current, held), expected in GRANTS_OPEN:
        assert await lua(args=["grants_open", known, current or "", flag(held)]) == int(expected)
    for loads, expected in LEAST_LOADED:
        assert await lua(args=["least_loaded", *loads]) == expected == policy.least_loaded(loads)
    for args, expected in FAIR_SHARE:
        assert await lua(args=["fair_share", *args]) == expected == policy.fair_share(*args)
