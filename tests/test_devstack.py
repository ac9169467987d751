"""`make run`'s dev stack (streampai/devstack.py): no orphans, and a port in use is named."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from devtools.processes import BASE_DIR, PYTHON, base_env, free_port, wait_until

pytestmark = pytest.mark.processes


def devstack(tmp_path: Path, db_template: Path, port: int, redis_url: str) -> subprocess.Popen[bytes]:
    db = tmp_path / "db.sqlite3"
    shutil.copy(db_template, db)
    env = base_env(
        PORT=str(port),
        REDIS_URL=redis_url,
        DATABASE_URL=f"sqlite:///{db}",
        STREAMPAI_VAR_DIR=str(tmp_path / "var"),
        LIVESTREAM_KEY_PREFIX=f"devstack{os.getpid()}",
    )
    return subprocess.Popen(
        [PYTHON, "-m", "streampai.devstack"],
        cwd=BASE_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def read_until(proc: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        assert time.monotonic() < deadline, f"no {pattern!r} in:\n{seen.decode(errors='replace')}"
        line = proc.stdout.readline()
        assert line, f"output ended before {pattern!r}:\n{seen.decode(errors='replace')}"
        seen += line
    return seen


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_ctrl_c_with_its_output_gone_leaves_no_child_running(
    tmp_path: Path, migrated_db_template: Path, redis_url: str
) -> None:
    port = free_port()
    proc = devstack(tmp_path, migrated_db_template, port, redis_url)
    children: list[psutil.Process] = []
    try:
        read_until(proc, b"Listening on TCP address", timeout=60)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2, children  # daphne and the worker
        # `make run | tee run.log`, Ctrl-C: tee is gone first, then the stack gets SIGINT.
        assert proc.stdout is not None
        proc.stdout.close()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        await wait_until(lambda: not any(alive(c) for c in children), 20, "every child stopped")
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # the port is free again
    finally:
        for process in [psutil.Process(proc.pid), *children] if proc.poll() is None else children:
            if alive(process):  # only after a failure: leave nothing behind
                process.kill()


def test_a_port_in_use_is_named_with_the_setting_to_change(
    tmp_path: Path, migrated_db_template: Path, redis_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = devstack(tmp_path, migrated_db_template, port, redis_url)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"Port {port} on 127.0.0.1 is not available".encode() in out
    assert f"PORT={port + 1} make run".encode() in out
