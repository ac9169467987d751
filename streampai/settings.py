"""Django settings for Streampai.

With no environment set this is safe for local use: DEBUG on, localhost only,
SQLite under var/ and the embedded Redis that `make run` starts under var/redis/.
Deploy-time values come from the environment:

    SECRET_KEY, DEBUG, ALLOWED_HOSTS (comma separated), DATABASE_URL, REDIS_URL,
    and LIVESTREAM_<KEY> for any key of livestream/conf.py (LIVESTREAM_CLEANUP_TIMEOUT,
    LIVESTREAM_PRESENCE_TTL, LIVESTREAM_KEY_PREFIX, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

from streampai.redisconf import channel_layers

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("STREAMPAI_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-local-development-key-do-not-deploy"
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h.strip()
]

INSTALLED_APPS = [
    "daphne",  # first: its runserver serves ASGI
    # before "channels": livestream's hardened runworker replaces Channels' own
    "livestream",
    "dashboard",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "allauth",
    "allauth.account",
    "hijack",
    "hijack.contrib.admin",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "hijack.middleware.HijackUserMiddleware",
    # Closes a session's dashboard sockets after logout / impersonation switches.
    "dashboard.sessions.EndedSessionsMiddleware",
]

ROOT_URLCONF = "streampai.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "streampai.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"), conn_max_age=0
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

# django-allauth: email + password sign-up and login, no email round trip.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_LOGOUT_ON_GET = False
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "/dashboard/"
ACCOUNT_LOGOUT_REDIRECT_URL = "/accounts/login/"
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

# django-hijack: only superusers impersonate, and never another superuser
# (dashboard/impersonation.py); the banner is dashboard/templates/hijack/notification.html.
HIJACK_PERMISSION_CHECK = "dashboard.impersonation.superusers_impersonate_others"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Redis: the presence store, leases, timers and the channel layer share it.
# Unset means the embedded redis-server that `make run` starts under var/redis/.
REDIS_URL = os.environ.get("REDIS_URL") or f"unix://{VAR_DIR / 'redis' / 'redis.sock'}?db=0"

# The presence-driven stream manager. Every key, its type and its default is
# documented in livestream/conf.py; LIVESTREAM_<KEY> in the environment
# overrides it (strings are converted to the key's type there).
LIVESTREAM = {
    name.removeprefix("LIVESTREAM_"): value
    for name, value in os.environ.items()
    if name.startswith("LIVESTREAM_") and name != "LIVESTREAM_LOG_LEVEL"
}
# Several deployments (or test runs) can share one Redis under different prefixes.
CHANNEL_LAYERS = channel_layers(REDIS_URL, prefix=f"{LIVESTREAM.get('KEY_PREFIX', 'streampai')}:asgi")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "livestream": {"level": os.environ.get("LIVESTREAM_LOG_LEVEL", "INFO")},
        "dashboard": {"level": "INFO"},
        "django.channels": {"level": "INFO"},
        "daphne": {"level": "INFO"},
    },
}
