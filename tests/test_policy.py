"""The grant rules of livestream/ownership/policy.py: unit tests, no Redis. The same cases
go through their Lua twin in tests/test_policy_lua.py."""

from __future__ import annotations

import itertools

import pytest

from livestream.ownership import policy

NEEDS_REDIS = False  # make test-fast runs these

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
