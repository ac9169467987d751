"""Every process connects the dashboard's signal receivers at start (dashboard/apps.py), not
only daphne: a user deactivated from a shell must still close their sockets."""

from __future__ import annotations

import subprocess

from devtools.processes import BASE_DIR, PYTHON, base_env

NEEDS_REDIS = False

CODE = (
    "from django.db.models.signals import post_save; "
    "print(sorted(str(entry[0][0]) for entry in post_save.receivers))"
)


def test_a_management_command_has_the_dashboards_receivers(tmp_path):
    env = base_env(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    done = subprocess.run(
        [PYTHON, "manage.py", "shell", "-c", CODE],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dashboard.sessions.deactivated" in done.stdout
    assert "dashboard.ws_auth.user_saved" in done.stdout
