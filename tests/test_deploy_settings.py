"""Issue 9.8: the production profile (DEBUG=0) and its environment knobs.

``manage.py check --deploy`` runs in a subprocess with the production
environment: clean except for security.W004 (HSTS is opt-in, see the README);
with SECURE_HSTS_SECONDS set it is clean. A weak or default SECRET_KEY is refused.
"""

from __future__ import annotations

import secrets
import subprocess

import pytest

from devtools.processes import BASE_DIR, PYTHON, base_env
from streampai.startup import EXIT_STATUS, PREFIX

pytestmark = pytest.mark.processes

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "streampai.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://streampai.example.com",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto: https",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=BASE_DIR,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def warnings_of(done: subprocess.CompletedProcess[str]) -> set[str]:
    import re

    return set(re.findall(r"\((\w+\.[WE]\d+)\)", done.stdout + done.stderr))


def test_check_deploy_production_profile():
    done = manage("check", "--deploy", **PRODUCTION)
    assert done.returncode == 0, done.stderr
    # Only HSTS, which is opt-in: browsers remember it, so it is turned on once HTTPS works everywhere.
    assert warnings_of(done) == {"security.W004"}, done.stdout + done.stderr


def test_check_deploy_with_hsts_is_clean():
    hsts = {
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
        "SECURE_HSTS_PRELOAD": "1",
    }
    done = manage("check", "--deploy", **PRODUCTION, **hsts)
    assert done.returncode == 0, done.stderr
    assert warnings_of(done) == set(), done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_production_settings_values():
    script = (
        "from django.conf import settings as s; "
        "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, "
        "s.SECURE_PROXY_SSL_HEADER, s.CSRF_TRUSTED_ORIGINS, s.CACHES['default']['BACKEND'])"
    )
    done = manage("shell", "-c", script, **PRODUCTION)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "True True True ('HTTP_X_FORWARDED_PROTO', 'https') ['https://streampai.example.com'] "
        "django.core.cache.backends.redis.RedisCache"
    )


@pytest.mark.parametrize(
    "key",
    [
        "",
        "insecure-local-development-key-do-not-deploy",
        "django-insecure-" + "x" * 50,
        "short-key",
        "a" * 60,
    ],
    ids=["missing", "dev-default", "django-insecure", "short", "repetitive"],
)
def test_weak_secret_key_refused_in_production(key):
    done = manage("check", **{**PRODUCTION, "SECRET_KEY": key})
    assert done.returncode == EXIT_STATUS, done.stderr
    assert done.stderr.strip().startswith(f"{PREFIX} SECRET_KEY"), done.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"}, "SECURE_PROXY_SSL_HEADER"),
        ({"CSRF_TRUSTED_ORIGINS": "streampai.example.com"}, "CSRF_TRUSTED_ORIGINS"),
        ({"SECURE_HSTS_SECONDS": "a year"}, "SECURE_HSTS_SECONDS"),
    ],
)
def test_malformed_knobs_refused(env, message):
    done = manage("check", **{**PRODUCTION, **env})
    assert done.returncode == EXIT_STATUS and message in done.stderr, done.stderr


def test_rate_limits_are_shared_through_the_redis_cache(settings, redis_url, key_prefix):
    """What one process counts, another sees: the cache is Redis, not per-process memory."""
    from django.core.cache import caches

    from streampai.redisconf import caches as caches_setting

    settings.CACHES = caches_setting(redis_url, key_prefix=f"{key_prefix}:cache")
    caches["default"].set("shared", 41)
    caches["default"].incr("shared")
    script = "from django.core.cache import cache; print(cache.get('shared'))"
    done = manage("shell", "-c", script, REDIS_URL=redis_url, LIVESTREAM_KEY_PREFIX=key_prefix)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "42"
