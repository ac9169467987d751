"""Many RTMP outputs in one cheap process: the broadcast benchmark's capacity stage.

A ``Receiver`` (devtools/broadcast.py) is an ``ffmpeg -listen`` of its own. ffmpeg's RTMP
publisher (the relay) sends 128-byte chunks, each in separate writes, and an ffmpeg reader
wakes for each of them: on a slow machine a receiver cost as much CPU as the relay feeding
it, so 40 receivers took half of the two cores the relays were being measured on. A
platform's ingest does not run on our machine; this one nginx-rtmp (the module the ingest
uses, which reads in large buffers) stands in for all of them. It records the video of
every stream to ``<stream name>.flv``; frames and the frames missing from each stream's
timestamp sequence are read from the files' tags when asked (``update``), not as they come.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from broadcast.ingest import RTMP_MODULE, nginx_binary
from devtools.broadcast import FrameSequence
from devtools.processes import free_port

_TAG_HEADER = 11
_VIDEO, _AVC, _AVC_NALU = 9, 7, 1


class FlvFrames:
    """Video frames in a growing FLV file (nginx appends as they arrive), read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sequence = FrameSequence()
        self._offset = 0
        self._pending = b""

    def update(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        start = self._offset == 0
        self._offset += len(data)
        buf = self._pending + data
        pos = 13 if start and buf.startswith(b"FLV") else 0  # file header + PreviousTagSize0
        while len(buf) - pos >= _TAG_HEADER:
            size = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            end = pos + _TAG_HEADER + size + 4  # + PreviousTagSize
            if len(buf) < end:
                break
            body = pos + _TAG_HEADER
            # An H.264 picture: not the sequence header (codec config) nor an end of sequence.
            if (
                buf[pos] & 0x1F == _VIDEO
                and size >= 2
                and buf[body] & 0x0F == _AVC
                and buf[body + 1] == _AVC_NALU
            ):
                dts = int.from_bytes(buf[pos + 4 : pos + 7], "big") | buf[pos + 7] << 24
                self.sequence.add(dts)
            pos = end
        self._pending = buf[pos:]


class SinkOutput:
    """One output's destination in the sink: what to give the relay (``url`` + ``key``)."""

    def __init__(self, sink: Sink, name: str) -> None:
        self.url = f"rtmp://127.0.0.1:{sink.port}/app"
        self.key = name
        self.counter = FlvFrames(sink.directory / "records" / f"{name}.flv")

    @property
    def frames(self) -> int:
        return self.counter.sequence.frames

    @property
    def gaps(self) -> int:
        return self.counter.sequence.gaps


class Sink:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.outputs: list[SinkOutput] = []

    def _config(self) -> str:
        d = self.directory
        return f"""load_module {RTMP_MODULE};
worker_processes 1;
daemon off;
master_process off;
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;
events {{ worker_connections 1024; }}
rtmp {{
    access_log off;
    server {{
        listen 127.0.0.1:{self.port};
        chunk_size 4096;
        application app {{
            live on;
            record video;
            record_path {d / "records"};
            record_unique off;
            record_append on;
        }}
    }}
}}
"""

    async def start(self) -> Sink:
        binary = nginx_binary()
        if binary is None or not RTMP_MODULE.exists():
            raise RuntimeError("the sink needs nginx and its RTMP module (make system-deps)")
        (self.directory / "records").mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(self._config())
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "-p",
            str(self.directory),
            "-e",
            str(self.directory / "error.log"),
            "-c",
            str(conf),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return self
        raise RuntimeError(f"the sink's nginx did not listen: {(self.directory / 'error.log').read_text()}")

    def output(self, name: str) -> SinkOutput:
        found = SinkOutput(self, name)
        self.outputs.append(found)
        return found

    def update(self) -> None:
        """Read what nginx has written since the last call."""
        for found in self.outputs:
            found.counter.update()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
