"""The broadcast benchmark's frame counting (devtools): a lost frame must show, a loop must not."""

from __future__ import annotations

from pathlib import Path

from devtools.broadcast import FrameSequence
from devtools.rtmp_sink import FlvFrames


def thirty_fps(n: int, start: int = 0) -> list[int]:
    """RTMP millisecond timestamps of n frames at 30 fps (steps of 33 and 34)."""
    return [start + (i * 1000) // 30 for i in range(n)]


def fed(timestamps: list[int]) -> FrameSequence:
    sequence = FrameSequence()
    for dts in timestamps:
        sequence.add(dts)
    return sequence


def test_a_complete_sequence_has_no_gap() -> None:
    assert fed(thirty_fps(300)).gaps == 0
    assert fed(thirty_fps(300)).frames == 300


def test_one_and_three_lost_frames_are_counted() -> None:
    frames = thirty_fps(300)
    assert fed(frames[:100] + frames[101:]).gaps == 1
    assert fed(frames[:100] + frames[103:200] + frames[201:]).gaps == 4


def test_the_clip_loop_point_and_a_new_publisher_are_not_losses() -> None:
    loop = thirty_fps(90, start=21) + thirty_fps(90, start=21 + 3021)  # make_clip's 54 ms step
    assert fed(loop).gaps == 0
    sequence = fed(thirty_fps(30))
    sequence.restart()
    for dts in thirty_fps(30, start=50_000):
        sequence.add(dts)
    assert sequence.gaps == 0


def _tag(kind: int, dts: int, body: bytes) -> bytes:
    header = bytes([kind]) + len(body).to_bytes(3, "big") + (dts & 0xFFFFFF).to_bytes(3, "big")
    header += bytes([dts >> 24]) + b"\0\0\0"
    return header + body + (11 + len(body)).to_bytes(4, "big")


def test_flv_frames_reads_pictures_only_and_across_partial_writes(tmp_path: Path) -> None:
    path = tmp_path / "u1o0.flv"
    data = b"FLV\x01\x05\x00\x00\x00\x09" + b"\0\0\0\0"
    data += _tag(9, 0, b"\x17\x00\x00\x00\x00config")  # AVC sequence header: not a frame
    for i, dts in enumerate(thirty_fps(60)):
        if i == 40:
            continue  # one picture lost
        data += _tag(8, dts, b"\xaf\x01aac")  # sound: not counted
        data += _tag(9, dts, (b"\x17" if i % 30 == 0 else b"\x27") + b"\x01\x00\x00\x00" + b"x" * 500)
    counter = FlvFrames(path)
    counter.update()  # nothing written yet
    half = len(data) // 2 + 7  # in the middle of a tag
    path.write_bytes(data[:half])
    counter.update()
    partial = counter.sequence.frames
    with path.open("ab") as f:
        f.write(data[half:])
    counter.update()
    assert 0 < partial < 59
    assert counter.sequence.frames == 59
    assert counter.sequence.gaps == 1
