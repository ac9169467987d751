"""Issue 9.3: the end-to-end flow and the ORM tests against PostgreSQL as well as SQLite.

The machine's PostgreSQL (127.0.0.1:5432, trust auth, user postgres; CI has it
too; STREAMPAI_TEST_POSTGRES overrides the server URL), in databases these
tests create and drop. Skipped, with the reason printed (pytest -ra), where no
PostgreSQL answers. Targeted on purpose: the end-to-end flow plus the tests
that touch the ORM, not the whole suite twice.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from devtools.processes import BASE_DIR, PYTHON, Stack, base_env
from tests.test_end_to_end import three_tabs_flow

pytestmark = pytest.mark.processes

SERVER = os.environ.get("STREAMPAI_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
# In-process tests that read or write the database (pytest-django makes its own test_<name> database).
ORM_TESTS = [
    "tests/test_dashboard_pages.py",
    "tests/test_admin_online.py",
    "tests/test_admin_debug.py",
    "tests/test_metrics.py",
    "tests/test_impersonation.py",
]


def admin_connection():
    import psycopg

    try:
        return psycopg.connect(SERVER, connect_timeout=3, autocommit=True)
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {SERVER}: {str(exc).strip().splitlines()[0]}")


def database_url(name: str) -> str:
    return urlsplit(SERVER)._replace(path=f"/{name}").geturl()


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A fresh database on the server, dropped afterwards; yields its DATABASE_URL."""
    name = f"streampai_e2e_{uuid.uuid4().hex[:10]}"
    with admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        with admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_postgres(postgres_database: str) -> str:
    migrate = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=BASE_DIR,
        env=base_env(DATABASE_URL=postgres_database),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    return postgres_database


async def test_end_to_end_on_postgresql(tmp_path, migrated_db_template, key_prefix, migrated_postgres):
    stack = Stack(tmp_path, migrated_db_template, key_prefix, env={"DATABASE_URL": migrated_postgres})
    try:
        await three_tabs_flow(stack)
        engine = stack.manage("shell", "-c", "from django.db import connection; print(connection.vendor)")
        assert engine.strip().splitlines()[-1] == "postgresql"
    finally:
        stack.stop_all()


def test_orm_tests_on_postgresql(redis_url):
    """The ORM tests in a pytest of their own whose DATABASE_URL is PostgreSQL."""
    admin_connection().close()  # skip here, with the reason, when there is no server
    name = f"streampai_orm_{uuid.uuid4().hex[:10]}"
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not processes and not browser",
            *ORM_TESTS,
        ],
        cwd=BASE_DIR,
        # pytest-django creates test_<name> from this URL and drops it at the end.
        env={**base_env(DATABASE_URL=database_url(name), REDIS_URL=redis_url)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(f"ORM tests on PostgreSQL: {summary}")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary
    with admin_connection() as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [f"%{name}%"]).fetchall()
    assert not left, f"test databases left behind: {left}"
