"""The grant rules of livestream/ownership/policy.py: unit tests (no Redis), then the same
cases through their Lua twin (livestream/ownership/policy_lua.py) on the suite's private
redis-server, so the scripts that apply them atomically apply the same policy."""

from __future__ import annotations

import itertools

import pytest

from livestream.ownership import policy
from livestream.ownership.policy_lua import POLICY

HOLD = "held-by-staff:"

# (owner, rebuilt, dead, holds_end) -> claimable
CLAIMABLE = [
    ((owner, rebuilt, dead, holds_end), expected)
    for owner, rebuilt, dead, holds_end in itertools.product(
        [None, "w1", HOLD + "7"], [False, True], [False, True], [False, True]
    )
    for expected in [not rebuilt and (owner is None or dead or (holds_end and owner.startswith(HOLD)))]
]
GRANTS_OPEN = [
    (("e1", "e1", False), True),
    (("e1", "e1", True), False),  # the epoch hold
    (("", "e1", False), False),  # never looked: cannot tell a loss from a first start
    (("e0", "e1", False), False),  # Redis lost its data since we looked
    (("e1", None, False), False),  # ... and nobody made a new epoch yet
]
LEAST_LOADED = [([0], 0), ([3, 1], 1), ([2, 2, 1, 1], 2), ([5, 0, 0], 1), ([1, 1, 1], 0)]
FAIR_SHARE = [
    # present, live workers, running here, orphans -> claimed
    ((10, 2, 0, 10), 5),
    ((10, 2, 5, 5), 1),  # at least one, even past the fair share
    ((10, 3, 0, 10), 4),  # rounded up
    ((10, 0, 0, 10), 10),  # no live worker counted yet: us alone
    ((3, 2, 0, 1), 1),
    ((0, 2, 0, 0), 0),
    ((7, 2, 2, 7), 2),
]


def claimable_py(owner, rebuilt, dead, holds_end) -> tuple[bool, int, int]:
    calls = {"rebuilt": 0, "dead": 0}

    def was_rebuilt(user_id: str) -> bool:
        assert user_id == "u1"
        calls["rebuilt"] += 1
        return rebuilt

    def is_dead(_owner: str) -> bool:
        calls["dead"] += 1
        return dead

    result = policy.claimable("u1", owner, was_rebuilt, is_dead, holds_end, HOLD)
    return result, calls["rebuilt"], calls["dead"]


@pytest.mark.parametrize(("args", "expected"), CLAIMABLE)
def test_claimable(args, expected):
    assert claimable_py(*args)[0] is expected


def test_claimable_asks_redis_only_when_it_must():
    """``dead`` and ``rebuilt`` are Redis calls for every present user each tick."""
    assert claimable_py("w1", False, False, False) == (False, 0, 1)  # a live owner: no rebuilt check
    assert claimable_py(None, False, False, False) == (True, 1, 0)  # nobody: no dead check
    assert claimable_py(HOLD + "7", False, False, True) == (True, 1, 0)


@pytest.mark.parametrize(("args", "expected"), GRANTS_OPEN)
def test_grants_open(args, expected):
    assert policy.grants_open(*args) is expected


@pytest.mark.parametrize(("loads", "expected"), LEAST_LOADED)
def test_least_loaded_is_the_first_of_the_least_loaded(loads, expected):
    assert policy.least_loaded(loads) == expected


def test_placement_fills_the_least_loaded_then_alternates():
    loads = [3, 1]
    assert policy.place(4, loads) == [1, 1, 0, 1]
    assert loads == [4, 4]
    assert policy.place(3, [0, 0, 0]) == [0, 1, 2]


@pytest.mark.parametrize(("args", "expected"), FAIR_SHARE)
def test_fair_share(args, expected):
    assert policy.fair_share(*args) == expected


def test_fence_and_effects_deadline_formulas():
    assert policy.fence_threshold(3.0, 1.0) == 2.0
    assert not policy.fence_due(10.0, 11.99, 3.0, 1.0)
    assert policy.fence_due(10.0, 12.0, 3.0, 1.0)
    # Effects outside Redis stop before the lease can lapse anywhere: it lasts at least
    # LEASE_TTL from when its renewal was sent.
    assert policy.effects_deadline(10.0, 3.0, 0.5) == 12.5
    assert policy.failover_hold(3.0, 1.0) == 5.0


# -- the Lua twin: the same cases, against a real redis-server -------------------------

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
