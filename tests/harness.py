"""The tests' harness: real daphne / runworker processes, clients and log reading.

It lives in devtools/ (shared with the benchmarks); this module keeps the names
the tests have always imported from here.

    stack = Stack(tmp_path, db_template, key_prefix, env={"LIVESTREAM_CLEANUP_TIMEOUT": "5"})
    web = stack.start_daphne()
    worker = stack.start_worker()
    session = await signup(web.url, "a@example.com", "pw...")
    ws = await open_socket(web.url, session)
    await worker.log.wait_for(r"UserStreamManager started: \\d+", timeout=5)
    ...
    stack.stop_all()
"""

from __future__ import annotations

from devtools.clients import (
    Account,
    amake_users,
    closed_with,
    create_accounts,
    listen,
    logged_in,
    login,
    make_users,
    next_json,
    open_socket,
    ping,
    signup,
)
from devtools.logs import (
    ManagerRun,
    RunTracker,
    log_problems,
    log_time,
    manager_runs,
    overlapping_runs,
    running_at,
    timed_lines,
    worker_id,
)
from devtools.processes import (
    BASE_DIR,
    BIN,
    PYTHON,
    LogFile,
    Proc,
    Stack,
    TimedOut,
    base_env,
    free_port,
    migrate_template,
    start_worker_ready,
    wait_listening,
    wait_until,
)

__all__ = [
    "BASE_DIR",
    "BIN",
    "PYTHON",
    "Account",
    "LogFile",
    "ManagerRun",
    "Proc",
    "RunTracker",
    "Stack",
    "TimedOut",
    "amake_users",
    "base_env",
    "closed_with",
    "create_accounts",
    "free_port",
    "listen",
    "log_problems",
    "log_time",
    "logged_in",
    "login",
    "make_users",
    "manager_runs",
    "migrate_template",
    "next_json",
    "open_socket",
    "overlapping_runs",
    "ping",
    "running_at",
    "signup",
    "start_worker_ready",
    "timed_lines",
    "wait_listening",
    "wait_until",
    "worker_id",
]
