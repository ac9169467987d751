"""A TCP proxy in front of a redis-server that can make a restart look as it does on a
real network: idle connections are not told (issue 20.5).

When a redis-server on the same host dies, the kernel closes its sockets and every
client sees EOF at once (redis-py's pool then reconnects on checkout). Behind a
container restart, a failover to a new address or a proxy, an idle pooled connection
learns nothing until it is used: its next command is answered with a reset. ``cut()``
does that: busy connections (a command sent, no answer yet, e.g. a blocking pop) are
reset at once; idle ones become zombies, reset when they next send. New connections
reach the (restarted) server as usual. Runs in a thread of its own, so a test that
blocks (a subprocess.run) does not stall everyone's Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from pathlib import Path


class _Pair:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.busy = False  # the client sent something the server has not answered yet
        self.zombie = False

    def reset_client(self) -> None:
        sock = self.client.get_extra_info("socket")
        if sock is not None:  # RST, not FIN: what a peer that lost the connection sends
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.transport.abort()


class FaultProxy:
    def __init__(self, redis_socket: Path) -> None:
        self.redis_socket = str(redis_socket)
        self.port = 0
        self.pairs: set[_Pair] = set()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="faultproxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> tuple[int, int]:
        """Drop every current connection as a lost network would; (reset, zombies)."""
        return asyncio.run_coroutine_threadsafe(self._cut(), self.loop).result(10)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self.pairs):
                pair.client.transport.abort()
                if pair.upstream is not None:
                    pair.upstream.transport.abort()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _cut(self) -> tuple[int, int]:
        reset = zombies = 0
        for pair in list(self.pairs):
            if pair.upstream is not None:
                pair.upstream.transport.abort()
            if pair.busy:
                pair.reset_client()
                self.pairs.discard(pair)
                reset += 1
            else:
                pair.zombie = True
                zombies += 1
        return reset, zombies

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pair = _Pair(writer)
        self.pairs.add(pair)
        try:
            up_reader, pair.upstream = await asyncio.open_unix_connection(self.redis_socket)
        except OSError:
            pair.reset_client()
            self.pairs.discard(pair)
            return
        back = asyncio.ensure_future(self._down(pair, up_reader))
        try:
            while data := await reader.read(65536):
                if pair.zombie:  # the first use of a connection the server forgot
                    pair.reset_client()
                    return
                pair.busy = True
                pair.upstream.write(data)
        except (OSError, RuntimeError):
            pass
        finally:
            self.pairs.discard(pair)
            back.cancel()
            if not pair.zombie:
                pair.upstream.transport.abort()
                writer.transport.abort()

    async def _down(self, pair: _Pair, up_reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            while data := await up_reader.read(65536):
                pair.busy = False
                pair.client.write(data)
        if not pair.zombie:  # the server closed it for real: so does the client's side
            pair.client.transport.abort()
