"""A real IRC server for the platform tests (miniircd from PyPI) and a plain IRC client
to talk to it as a viewer would: another person in the streamer's channel.

miniircd speaks plain IRC: it NAKs Twitch's capabilities (so no IRCv3 tags reach the
client) and, started with ``-p``, answers a wrong ``PASS`` with ``464``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

from devtools.processes import BIN, free_port


class IrcServer:
    """``miniircd`` on 127.0.0.1:<free port>; ``password`` is what PASS must carry."""

    def __init__(
        self, log_dir: Path, password: str | None = None, tls: tuple[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.password = password
        self.tls = tls  # (certificate, key) PEM files: miniircd speaks TLS
        self.log_path = log_dir / f"miniircd-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"irc://127.0.0.1:{self.port}"

    def start(self) -> IrcServer:
        args = [str(BIN / "miniircd"), "--listen", "127.0.0.1", "--ports", str(self.port), "--debug"]
        if self.password:
            args += ["-p", self.password]
        if self.tls:
            args += ["--ssl-cert-file", self.tls[0], "--ssl-key-file", self.tls[1]]
        if os.geteuid() == 0:  # miniircd refuses root unless told so (CI runs as root)
            args += ["--setuid", "root"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            assert self.proc.poll() is None, self.log_path.read_text()
            assert time.monotonic() < deadline, "miniircd did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Viewer:
    """A plain IRC client in ``#channel``: ``say`` sends, ``lines`` keeps what it received."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nick: str) -> None:
        self.reader, self.writer, self.nick = reader, writer, nick
        self.lines: list[str] = []
        self.arrived = asyncio.Event()
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def join(cls, server: IrcServer, nick: str, channel: str) -> Viewer:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        viewer = cls(reader, writer, nick)
        if server.password:
            await viewer.send(f"PASS {server.password}")
        await viewer.send(f"NICK {nick}")
        await viewer.send(f"USER {nick} 0 * :{nick}")
        await viewer.wait_for(lambda line: " 001 " in line, 10)
        await viewer.send(f"JOIN #{channel}")
        await viewer.wait_for(lambda line: f"{nick}!" in line and " JOIN " in line, 10)
        return viewer

    async def _read(self) -> None:
        while raw := await self.reader.readline():
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("PING"):
                await self.send("PONG" + line[4:])
            self.lines.append(line)
            self.arrived.set()

    async def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def say(self, channel: str, text: str) -> None:
        await self.send(f"PRIVMSG #{channel} :{text}")

    async def wait_for(self, predicate, timeout: float, after: int = 0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines[after:]:
                    if predicate(line):
                        return line
                self.arrived.clear()
                if self.task.done():
                    raise ConnectionError("viewer disconnected")
                await self.arrived.wait()

    async def close(self) -> None:
        self.task.cancel()
        self.writer.close()
