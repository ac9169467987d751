"""dashboard/daphne/memory.py: one trim per burst, only once most of the peak has closed."""

from __future__ import annotations

from dashboard.daphne import memory


async def test_a_trim_runs_once_after_a_burst_closed_and_not_for_small_dips():
    trimmer = memory.Trimmer()
    for n in range(0, 2001, 100):
        trimmer.seen(n)
    assert trimmer.peak == 2000
    trimmer.seen(1600)  # 400 closed: not a burst
    assert trimmer._running is None
    trimmer.seen(999)  # 1,001 closed, under half left
    running = trimmer._running
    assert running is not None
    trimmer.seen(10)  # the same burst: no second trim
    assert trimmer._running is running
    await running  # gc + the real malloc_trim (glibc here), never raises
    assert trimmer._running is None and trimmer.peak == 999
    trimmer.seen(600)  # back up a little: a new peak only above the old one
    assert trimmer.peak == 999
