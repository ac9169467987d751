"""The nemesis (devtools/nemesis.py): its schedule is the seed's, its checker catches an
overlap, and a 2-minute run against real processes finds no problem."""

from __future__ import annotations

import asyncio

import pytest

from devtools import nemesis

NEEDS_REDIS = False  # the schedule and the checker; the run below is marked processes


def test_the_schedule_is_a_function_of_the_seed():
    assert nemesis.schedule(7, 2) == nemesis.schedule(7, 2)
    assert nemesis.schedule(7, 2) != nemesis.schedule(8, 2)
    assert {f.kind for f in nemesis.schedule(3, 30)} == set(nemesis.KINDS)  # 30 minutes: every kind


def effect(user: str, token: int, t0: float, t: float) -> dict:
    return {"kind": "effect", "what": "X:e", "user": user, "token": token, "t0": t0, "t": t}


def test_the_checker_finds_an_old_tokens_effect_after_a_newer_ones():
    fine = [
        effect("1", 1, 0.0, 0.1),
        effect("1", 1, 1.0, 1.1),
        effect("1", 2, 1.2, 1.3),
        effect("2", 1, 5, 5.1),
    ]
    assert nemesis.overlapping_effects(fine) == []
    # Writes that ran at once (their intervals overlap) cannot be ordered: not an overlap.
    assert nemesis.overlapping_effects([effect("1", 2, 1.0, 1.3), effect("1", 1, 1.2, 1.4)]) == []
    late = [*fine, effect("1", 1, 1.5, 1.6)]  # token 1 acted after token 2 had
    [problem] = nemesis.overlapping_effects(late)
    assert "token 1" in problem and "after token 2" in problem


@pytest.mark.processes
@pytest.mark.long
@pytest.mark.cpu_heavy
def test_a_two_minute_nemesis_run_finds_nothing(tmp_path):
    report = asyncio.run(nemesis.main(seed=1, minutes=2, directory=tmp_path))
    print(report)
    assert report["problems"] == []
    assert sum(report["faults"].values()) >= 5
    assert report["effects"] > 0 and report["alerts_accepted"] > 0
