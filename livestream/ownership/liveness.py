"""Is a worker process on this machine still alive? (Linux; elsewhere: unknown.)

A worker killed with -9 keeps its leases until they expire (LEASE_TTL). When
the dead worker ran on the same machine and in the same PID namespace as the
one asking, the kernel can say for certain that it is gone, and its users can
be taken over at once instead.

A process is named by ``<boot id>/<pid namespace>/<pid>/<start time>``: the
boot id and namespace say whether its pid means anything here, the start time
tells a reused pid apart. Anything uncertain (another machine or container, no
/proc, a process we may not inspect) counts as alive: a wrong "dead" would run
a user's manager twice, a wrong "alive" only waits for the lease to lapse.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

_PROC = Path("/proc")


@functools.cache
def _machine() -> str:
    """``<boot id>/<pid namespace inode>``, or "" where there is no /proc."""
    try:
        boot_id = (_PROC / "sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat(_PROC / "self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot_id}/{namespace}"


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc/<pid>/stat, or None if unreadable."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], fields[19]  # state, starttime (fields 3 and 22 of proc(5))


def process_identity(pid: int | None = None) -> str:
    """This process's name for :func:`is_dead` ("" where it cannot be told)."""
    pid = os.getpid() if pid is None else pid
    machine, stat = _machine(), _stat(pid)
    if not machine or stat is None:
        return ""
    return f"{machine}/{pid}/{stat[1]}"


def worker_identity() -> dict[str, str]:
    """What a worker publishes about its process with its heartbeat: host and pid for people,
    ``proc`` so that workers on this machine can see that it died."""
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "proc": process_identity()}


def is_dead(identity: str) -> bool:
    """True only if the process named ``identity`` certainly no longer runs."""
    machine = _machine()
    if not machine or not identity.startswith(machine + "/"):
        return False  # another machine or container: its pids mean nothing here
    try:
        pid_text, started = identity[len(machine) + 1 :].split("/")
        pid = int(pid_text)
    except ValueError:
        return False
    if pid <= 0:  # kill(0) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, under another user; /proc tells whether it is the same process
    stat = _stat(pid)
    if stat is None:
        return False
    state, start_time = stat
    return start_time != started or state in {"Z", "X", "x"}  # pid reused, or a zombie
