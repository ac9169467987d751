"""Child processes that must die with their parent (nginx under runingest, relays under a worker)."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

PR_SET_PDEATHSIG = 1
# Loaded here, not in the child: find_library may run a subprocess, unsafe between fork and exec.
_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_name, use_errno=True) if _name else None


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    """prctl(PR_SET_PDEATHSIG, sig) for the calling process (Linux); a no-op elsewhere.

    Called in a child between fork and exec (Popen's preexec_fn): when the parent dies, even
    by kill -9, the kernel sends ``sig`` to the child, so a killed worker never leaves a relay
    publishing to a receiver the next owner will publish to."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
