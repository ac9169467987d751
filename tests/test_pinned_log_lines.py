"""The worker's log lines issue 18 pins, spelled out: the tests that wait for them use the
constants, so only this file fails if a constant's text changes."""

from __future__ import annotations

from livestream import logformats

NEEDS_REDIS = False


def test_the_broadcast_log_lines_read_as_the_issue_pins_them():
    assert logformats.INPUT_CHANGED % ("7", "connected") == "[UserStreamManager:7] input connected"
    assert logformats.INPUT_CHANGED % ("7", "disconnected") == "[UserStreamManager:7] input disconnected"
    assert logformats.OUTPUT_LIVE % ("7", "3") == "[UserStreamManager:7] output 3 live"
    assert logformats.OUTPUT_FAILED % ("7", "3", "why") == "[UserStreamManager:7] output 3 failed: why"
    assert logformats.STREAM_ENDED % ("7", "why") == "[UserStreamManager:7] stream ended: why"
