"""Count Redis round trips with MONITOR, and say which script each EVALSHA ran.

MONITOR prints every command a client sends, and (separately, as ``[0 lua]``)
every command a Lua script runs. A round trip is one non-Lua command, except
that a MULTI ... EXEC block (a redis-py transaction pipeline, sent in one write)
counts once. Over TCP each line names the client's address, which
``client_ports`` maps back to the process that owns the connection.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

_LINE = re.compile(r"^\+(\d+\.\d+) \[\d+ ([^\]]+)\] (.*)$")
_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Command:
    at: float  # Redis clock (this machine's)
    client: str  # "127.0.0.1:54321", "unix:/path" or "lua"
    name: str  # upper case
    first_arg: str


def script_names() -> dict[str, str]:
    """sha1 -> name ("presence.track") of every Lua script livestream/* declares."""
    import livestream
    from livestream.redis import SCRIPTS

    for info in pkgutil.iter_modules(livestream.__path__, "livestream."):
        try:
            importlib.import_module(info.name)  # declares its scripts
        except Exception:  # a module that needs something we lack declares none we run
            continue
    return {sha: found.name for sha, found in SCRIPTS.items()}


class Monitor:
    """``with Monitor(url) as mon: ...`` then ``mon.commands``."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            self.address: str | tuple[str, int] = parts.path
            self.family = socket.AF_UNIX
        else:
            self.address = (parts.hostname or "127.0.0.1", parts.port or 6379)
            self.family = socket.AF_INET
        self.commands: list[Command] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Monitor:
        self._sock = socket.socket(self.family, socket.SOCK_STREAM)
        self._sock.connect(self.address)
        self._sock.sendall(b"MONITOR\r\n")
        self._sock.settimeout(0.2)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)  # let the last lines arrive
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sock.close()

    def _read(self, ready: threading.Event) -> None:
        buffer = b""
        while not self._stop.is_set():
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\r\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                if line == "+OK":
                    ready.set()
                    continue
                match = _LINE.match(line)
                if match is None:
                    continue
                args = _ARG.findall(match[3])
                if not args:
                    continue
                self.commands.append(
                    Command(float(match[1]), match[2], args[0].upper(), args[1] if len(args) > 1 else "")
                )


def key_kind(key: str) -> str:
    """What a channel-layer or app key is for, with user ids and random names folded."""
    if ":group:" in key:
        return "group " + _fold(key.split(":group:", 1)[1])
    if "presence-manager-inbox" in key:
        return "worker inbox channel"
    if "presence-manager" in key:
        return "channel presence-manager"
    if "specific." in key:
        return "consumer channel"
    return _fold(key.split(":", 1)[-1])


def _fold(name: str) -> str:
    """Session keys, user ids and other per-connection parts of a key name -> <id>."""
    return re.sub(r"[0-9a-f]{12,}|\d+", "<id>", name)


def round_trips(commands: Iterable[Command], scripts: dict[str, str]) -> Counter[str]:
    """Round trips by label (EVALSHA by script name, MULTI..EXEC once) from client commands."""
    counts: Counter[str] = Counter()
    in_multi: dict[str, list[str]] = {}
    for command in commands:
        if command.client == "lua":
            continue
        if command.client in in_multi:
            if command.name == "EXEC":
                counts["MULTI[" + " ".join(in_multi.pop(command.client)) + "]"] += 1
            else:
                in_multi[command.client].append(command.name)
            continue
        if command.name == "MULTI":
            in_multi[command.client] = []
        elif command.name == "EVALSHA":
            counts["EVALSHA " + scripts.get(command.first_arg, command.first_arg[:8])] += 1
        elif command.name == "EVAL":
            counts["EVAL (channels-redis script)"] += 1
        elif command.first_arg and command.name not in ("HELLO", "PING", "CLIENT"):
            counts[f"{command.name} ({key_kind(command.first_arg)})"] += 1
        else:
            counts[command.name] += 1
    return counts


def client_ports(pids: dict[str, int], redis_port: int) -> dict[str, str]:
    """ "127.0.0.1:<port>" -> process name, for the TCP connections those processes have to Redis."""
    owners: dict[str, str] = {}
    for name, pid in pids.items():
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        for conn in connections:
            if conn.raddr and conn.raddr.port == redis_port:
                owners[f"{conn.laddr.ip}:{conn.laddr.port}"] = name
    return owners
