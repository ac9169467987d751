"""A private Redis Sentinel set-up: a primary, a replica and three sentinels.

All five are the suite's redis-server binary, on free TCP ports of 127.0.0.1, with
everything under one directory. Small ``down-after-milliseconds`` and ``failover-timeout``
make a failover take seconds. Never the machine's shared Redis.

``proxied=True`` (the nemesis, devtools/nemesis.py) puts a TcpProxy in front of each data
server and has it announce the proxy's port: the sentinels, the replication link and
every client then reach the data servers through the proxies, so a delay or a blackhole
there is one the sentinels see too (a blackhole longer than down-after is a failover).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devtools.processes import free_port
from devtools.tcpproxy import TcpProxy
from streampai.embedded_redis import redis_server_binary

SERVICE = "mymaster"


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)  # to start it again
    public_port: int = 0  # what the sentinels and clients use (its proxy's, if proxied)

    def __post_init__(self) -> None:
        self.public_port = self.public_port or self.port

    def alive(self) -> bool:
        return self.process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def kill(self) -> None:
        """kill -9, as a crash."""
        if self.alive():
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        """Start it again (after kill or stop), same port and arguments."""
        self.stop()
        self.process = subprocess.Popen(
            [redis_server_binary(), *self.args], stdin=subprocess.DEVNULL, start_new_session=True
        )


@dataclass
class SentinelSetup:
    directory: Path
    down_after_ms: int = 1000
    failover_timeout_ms: int = 3000
    proxied: bool = False
    servers: list[Server] = field(default_factory=list)
    proxies: list[TcpProxy] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def primary(self) -> Server:
        return self.servers[0]

    @property
    def replica(self) -> Server:
        return self.servers[1]

    @property
    def sentinels(self) -> list[Server]:
        return self.servers[2:]

    def url(self, db: int = 0) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/{db}"

    def _spawn(self, name: str, port: int, *args: str, public_port: int = 0) -> Server:
        log = self.directory / f"{name}.log"
        process = subprocess.Popen(
            [redis_server_binary(), *args], stdin=subprocess.DEVNULL, start_new_session=True
        )
        server = Server(name, port, process, log, list(args), public_port)
        self.servers.append(server)
        return server

    def _data_server(self, name: str, *extra: str) -> Server:
        """A data server started from a config file of its own, as in production: the
        sentinels' CONFIG REWRITE keeps a role they gave it (a restart with the original
        ``replicaof`` would come back as the replica of a replica)."""
        port = free_port()
        workdir = self.directory / name
        workdir.mkdir(exist_ok=True)
        public = port
        lines = [
            f"port {port}", "bind 127.0.0.1", 'save ""',
            f"appendonly {'yes' if self.proxied else 'no'}", "appendfsync always",
            f"dir {workdir}", f"logfile {self.directory / f'{name}.log'}",
            *extra,
        ]  # fmt: skip
        if self.proxied:
            proxy = TcpProxy(free_port(), port).start()
            self.proxies.append(proxy)
            public = proxy.listen_port
            lines += ["replica-announce-ip 127.0.0.1", f"replica-announce-port {public}"]
        conf = self.directory / f"{name}.conf"
        conf.write_text("\n".join(lines) + "\n")
        return self._spawn(name, port, str(conf), public_port=public)

    def by_public_port(self, port: int | None) -> Server | None:
        return next((s for s in self.servers[:2] if s.public_port == port), None)

    def start(self, timeout: float = 30) -> SentinelSetup:
        primary = self._data_server("primary")
        wait_ping(primary, timeout)
        replica = self._data_server("replica", f"replicaof 127.0.0.1 {primary.public_port}")
        wait_ping(replica, timeout)
        for i in range(3):
            port = free_port()
            conf = self.directory / f"sentinel{i}.conf"
            # Sentinel rewrites its config file: one writable file each.
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"logfile {self.directory / f'sentinel{i}.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {primary.public_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            wait_ping(self._spawn(f"sentinel{i}", port, str(conf), "--sentinel"), timeout)
        self.wait_healthy(primary.public_port, timeout)
        return self

    def master_port(self) -> int | None:
        """The master port the sentinels agree on (None while they do not)."""
        answers = set()
        for sentinel in self.sentinels:
            if not sentinel.alive():
                continue
            try:
                addr = sentinel.client().execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
            except redis.RedisError:
                return None
            answers.add(int(addr[1]) if addr else None)
        return answers.pop() if len(answers) == 1 else None

    def wait_healthy(self, master_port: int, timeout: float) -> None:
        """Until every sentinel knows the master, its replica (in sync) and the two other sentinels."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.master_port() == master_port and all(self._sees_all(s) for s in self.sentinels):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"sentinel set-up not healthy within {timeout}s")
            time.sleep(0.1)

    @staticmethod
    def _sees_all(sentinel: Server) -> bool:
        client = sentinel.client()
        replicas = client.execute_command("SENTINEL", "replicas", SERVICE)
        peers = client.execute_command("SENTINEL", "sentinels", SERVICE)
        synced = [r for r in replicas if "s_down" not in r["flags"] and r.get("master-link-status") == "ok"]
        return len(synced) >= 1 and len(peers) == 2

    def wait_promoted(self, old_port: int, timeout: float) -> int:
        """The new master's port, once the sentinels agree on one other than ``old_port``."""
        deadline = time.monotonic() + timeout
        while True:
            port = self.master_port()
            # Promoted, and the promoted server says so itself (it accepts writes).
            server = next((s for s in self.servers[:2] if s.public_port == port and s.alive()), None)
            if (
                port is not None
                and port != old_port
                and server is not None
                and server.client().info("replication")["role"] == "master"
            ):
                return port
            if time.monotonic() > deadline:
                raise AssertionError(f"no failover within {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        for proxy in self.proxies:
            proxy.stop()


def wait_ping(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not server.alive():
            raise AssertionError(f"{server.name} exited:\n{_tail(server.log)}")
        try:
            server.client().ping()
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise AssertionError(f"{server.name} not answering within {timeout}s") from None
            time.sleep(0.05)


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except FileNotFoundError:
        return ""
