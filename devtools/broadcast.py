"""Real RTMP parts for the broadcast tests and benchmark (issue 18).

* ``broadcast_env(tmp_path)``: the LIVESTREAM settings daphne, the worker and the ingest
  share (a free RTMP port, a private ingest directory, go_live checks on).
* ``start_ingest(stack, web)``: ``manage.py runingest`` (nginx-rtmp) for the stack.
* ``Publisher``: ffmpeg standing in for OBS: a 1280x720 30 fps test pattern with a sine
  tone, x264 ultrafast, keyframe every second, published with -re (real time).
* ``Receiver``: an RTMP output to relay to: ``ffmpeg -listen 1`` (started again after each
  publisher) behind a TCP proxy of ours that records every connection (open, close) so a
  test can tell how many publishers were connected at once; frames are counted from
  ffmpeg's progress, resolution and frame rate read from its stream line.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.processes import Proc, Stack, free_port


def ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def broadcast_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "LIVESTREAM_RTMP_PORT": str(free_port()),
        "LIVESTREAM_INGEST_DIR": str(tmp_path / "ingest"),
        "LIVESTREAM_RTMP_PUBLIC_HOST": "127.0.0.1",
        "LIVESTREAM_BROADCAST_REQUIRED": "1",
        **extra,
    }


async def start_ingest(stack: Stack, web: Proc, name: str = "ingest", timeout: float = 20) -> Proc:
    proc = stack._spawn(name, [*_manage(), "runingest", "--callback", web.url, "--bind", "127.0.0.1"])
    await proc.log.wait_for(r"RTMP ingest (on|unavailable)", timeout)
    if "unavailable" in proc.log.text():
        raise AssertionError(proc.log.text())
    sock = Path(stack.process_env()["LIVESTREAM_INGEST_DIR"]) / "control.sock"
    deadline = time.monotonic() + timeout
    while not sock.exists():
        if time.monotonic() > deadline or not proc.alive():
            raise AssertionError(f"nginx did not start:\n{proc.log.text()}")
        await asyncio.sleep(0.05)
    return proc


def _manage() -> list[str]:
    from devtools.processes import BASE_DIR, PYTHON

    return [PYTHON, str(BASE_DIR / "manage.py")]


def publish_command(url: str, size: str = "1280x720", rate: int = 30, bitrate: str = "2500k") -> list[str]:
    return [
        ffmpeg(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={rate}",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-b:v",
        bitrate,
        "-g",
        str(rate),
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-f",
        "flv",
        url,
    ]


def make_clip(
    path: Path, seconds: int = 20, size: str = "1280x720", rate: int = 30, bitrate: str = "2500k"
) -> Path:
    """The test pattern encoded once to an FLV file, for publishers that only copy it (many
    "OBS" at once without an x264 encoder each)."""
    import subprocess

    command = publish_command(str(path), size, rate, bitrate)
    command.remove("-re")
    for name in ("testsrc2", "sine"):  # bounded inputs
        index = next(i for i, arg in enumerate(command) if arg.startswith(name))
        # The sound a little shorter than the picture: -stream_loop shifts each loop by the
        # longer stream's end, and a longer sound left a whole frame's gap in the video at each
        # loop (62 ms between two frames; now 54: the video's start offset, under FrameSequence's bar).
        command[index] += f":duration={seconds if name == 'testsrc2' else seconds - 0.1}"
    subprocess.run(command, check=True, timeout=300)
    return path


def copy_command(url: str, clip: Path) -> list[str]:
    """Publish ``clip`` in a loop, in real time, without encoding (a cheap stand-in for OBS)."""
    return [
        ffmpeg(),
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        str(clip),
        "-c",
        "copy",
        "-f",
        "flv",
        url,
    ]


class Publisher:
    """ffmpeg publishing a test pattern to ``url`` (what OBS does with Server + Stream Key);
    with ``clip``, copying a pre-encoded one (make_clip) instead of encoding."""

    def __init__(self, url: str, clip: Path | None = None, **options: Any) -> None:
        self.url = url
        self.clip = clip
        self.options = options
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Publisher:
        command = (
            copy_command(self.url, self.clip) if self.clip else publish_command(self.url, **self.options)
        )
        self.proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def exited(self, timeout: float) -> int | None:
        assert self.proc is not None
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.proc.wait(), timeout)
        return None

    async def stderr(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            return (await asyncio.wait_for(self.proc.stderr.read(), 2)).decode(errors="replace")
        return ""

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)  # OBS gone at once (a crash, a cable)
            await self.proc.wait()


_STREAM = re.compile(r"Video: .*?(\d{2,5})x(\d{2,5}).*?(\d+(?:\.\d+)?) fps")


def framecrc_args() -> list[str]:
    """ffmpeg output options: one line per video packet, "<stream>, <dts>, <pts>, <duration>,
    <size>, 0x<crc>", flushed as it goes. The CRC of a packet survives ``-c copy``, so the
    same frame can be recognised at two places (relay latency, frames lost)."""
    return ["-map", "0:v", "-c", "copy", "-f", "framecrc", "-flush_packets", "1", "pipe:1"]


class FrameSequence:
    """Frames counted, and the frames missing from their timestamp sequence (``gaps``: a
    decode timestamp that jumps by more than 1.75 frame intervals; one lost frame makes 2,
    make_clip's loop point 1.6): lost, not merely late."""

    def __init__(self, fps: float = 30.0) -> None:
        self.frames = 0
        self.gaps = 0
        self._frame_ms = 1000.0 / fps
        self._last_dts: int | None = None

    def add(self, dts_ms: int) -> None:
        # RTMP's timestamps are milliseconds: 30 fps steps by 33 or 34.
        self.frames += 1
        last, self._last_dts = self._last_dts, dts_ms
        if last is not None and dts_ms - last > 1.75 * self._frame_ms:
            self.gaps += round((dts_ms - last) / self._frame_ms) - 1

    def restart(self) -> None:
        """A new publisher: its timestamps start afresh (a reconnect's gap is not counted)."""
        self._last_dts = None


class FrameLog:
    """Arrival times of video packets, by (size, crc), and their sequence (``sequence``)."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.arrivals: dict[tuple[str, str], float] = {}
        self.sequence = FrameSequence()
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None

    @property
    def frames(self) -> int:
        return self.sequence.frames

    def line(self, raw: bytes) -> bool:
        if raw.startswith(b"#"):
            return False
        parts = raw.decode(errors="replace").split(",")
        if len(parts) < 6:
            return False
        now = time.time()
        self.sequence.add(int(parts[1]))
        self.first_frame_at = self.first_frame_at or now
        self.last_frame_at = now
        if self.keep:
            self.arrivals.setdefault((parts[4].strip(), parts[5].strip()), now)
        return True


class Tap:
    """A reader of the ingest itself (nginx lets this machine play): the frames as they arrive
    before any relay, for comparing with a receiver's."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.log = FrameLog(keep=True)
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Tap:
        self.proc = await asyncio.create_subprocess_exec(
            ffmpeg(),
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            self.url,
            *framecrc_args(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.log.line(raw)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._task is not None:
            self._task.cancel()


@dataclass
class Connection:
    opened: float
    closed: float | None = None


@dataclass
class Receiver:
    """One RTMP output: ``url`` is what to give the relay (via the proxy)."""

    app: str = "app"
    stream: str = "k"
    keep: bool = False  # keep every frame's arrival (latency, frames lost)
    connections: list[Connection] = field(default_factory=list)
    sessions: int = 0
    resolution: tuple[int, int] | None = None
    fps: float | None = None
    audio: bool = False  # a publisher sent an audio stream
    max_open: int = 0

    def __post_init__(self) -> None:
        self.port = free_port()  # the proxy, what the relay publishes to
        self._backend_port = free_port()  # ffmpeg -listen
        self._server: asyncio.base_events.Server | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._open = 0
        self.log = FrameLog(keep=self.keep)
        self.session_first_frames: list[float] = []  # when each publisher's first frame arrived

    @property
    def frames(self) -> int:
        return self.log.frames

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/{self.app}"

    async def start(self) -> Receiver:
        self._loop_task = asyncio.create_task(self._listen_loop())
        self._server = await asyncio.start_server(self._proxy, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        """The receiver is gone (connections refused from now on)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(BaseException):
                await self._loop_task
            self._loop_task = None
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    def open_connections(self) -> int:
        return self._open

    async def _listen_loop(self) -> None:
        while True:
            self._proc = await asyncio.create_subprocess_exec(
                ffmpeg(),
                "-hide_banner",
                "-nostdin",
                # No progress line: it is rewritten with "\r", never ended with a newline, and
                # after ~4.5 minutes it outgrew the line reader below, which ended the receiver
                # (the first 10-minute broadcast bench "lost" the second half of its frames).
                "-nostats",
                "-listen",
                "1",
                "-i",
                f"rtmp://127.0.0.1:{self._backend_port}/{self.app}/{self.stream}",
                *framecrc_args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                await asyncio.gather(self._read_frames(self._proc), self._read_info(self._proc))
                await self._proc.wait()
            finally:
                if self._proc.returncode is None:
                    self._proc.kill()
                    await self._proc.wait()

    async def _read_info(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            if b"Audio:" in raw:
                self.audio = True
            match = _STREAM.search(raw.decode(errors="replace"))
            if match:
                self.resolution = (int(match[1]), int(match[2]))
                self.fps = float(match[3])
                self.sessions += 1

    async def _read_frames(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        first = True
        self.log.sequence.restart()
        async for raw in proc.stdout:
            if self.log.line(raw) and first:
                first = False
                self.session_first_frames.append(time.time())

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(time.time())
        self.connections.append(conn)
        self._open += 1
        self.max_open = max(self.max_open, self._open)
        try:
            upstream = None
            deadline = time.monotonic() + 3
            while upstream is None:
                try:
                    upstream = await asyncio.open_connection("127.0.0.1", self._backend_port)
                except OSError:
                    if time.monotonic() > deadline:
                        return
                    await asyncio.sleep(0.05)
            up_reader, up_writer = upstream

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(Exception):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                with contextlib.suppress(Exception):
                    dst.close()

            await asyncio.wait(
                [asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))],
                return_when=asyncio.FIRST_COMPLETED,
            )
            with contextlib.suppress(Exception):
                up_writer.close()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            conn.closed = time.time()
            self._open -= 1

    def overlapping(self) -> int:
        """The most connections that were open at once (a relay's publish each)."""
        return self.max_open
