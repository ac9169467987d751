"""Django settings for Streampai.

With no environment set this is safe for local use: DEBUG on, localhost only,
SQLite under var/ and the embedded Redis that `make run` starts under var/redis/.
Deploy-time values come from the environment:

    SECRET_KEY, DEBUG, ALLOWED_HOSTS (comma separated), DATABASE_URL, REDIS_URL,
    and LIVESTREAM_<KEY> for any key of livestream/conf.py (LIVESTREAM_CLEANUP_TIMEOUT,
    LIVESTREAM_PRESENCE_TTL, LIVESTREAM_KEY_PREFIX, ...); CLOUDFLARE_ACCOUNT_ID,
    CLOUDFLARE_API_TOKEN, CLOUDFLARE_API_BASE_URL, CLOUDFLARE_WEBHOOK_SECRET;
    behind TLS: SECURE_SSL_REDIRECT, SESSION_COOKIE_SECURE, CSRF_COOKIE_SECURE (on by
    default when DEBUG is off), SECURE_HSTS_SECONDS, SECURE_HSTS_INCLUDE_SUBDOMAINS,
    SECURE_HSTS_PRELOAD, SECURE_PROXY_SSL_HEADER ("X-Forwarded-Proto: https"),
    CSRF_TRUSTED_ORIGINS (comma separated, with scheme).

Anything malformed or unsafe raises ImproperlyConfigured here; manage.py and
streampai/asgi.py turn that into one line and exit (streampai/startup.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from streampai.redisconf import caches, channel_layers

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("STREAMPAI_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None


DEBUG = env_bool("DEBUG", True)
DEV_SECRET_KEY = "insecure-local-development-key-do-not-deploy"
SECRET_KEY = os.environ.get("SECRET_KEY", "")


def check_secret_key(key: str) -> None:
    """Refuse a missing, default or guessable key in production (Django's own W009 rule, as an error)."""
    if not key:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    if key == DEV_SECRET_KEY or key.startswith("django-insecure") or len(key) < 50 or len(set(key)) < 5:
        raise ImproperlyConfigured(
            "SECRET_KEY is weak or a default: use at least 50 random characters when DEBUG is off "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )


if not DEBUG:
    check_secret_key(SECRET_KEY)
elif not SECRET_KEY:
    SECRET_KEY = DEV_SECRET_KEY
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1")

# Behind TLS (DEBUG off): cookies only over HTTPS and plain HTTP redirected,
# unless the environment says otherwise. HSTS is opt-in (SECURE_HSTS_SECONDS):
# browsers remember it, so it is set once HTTPS is known to work everywhere.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)


def proxy_ssl_header(value: str) -> tuple[str, str] | None:
    """SECURE_PROXY_SSL_HEADER from "X-Forwarded-Proto: https" (or "HTTP_X_FORWARDED_PROTO,https")."""
    if not value.strip():
        return None
    header, sep, expected = value.partition(":") if ":" in value else value.partition(",")
    header, expected = header.strip(), expected.strip()
    if not sep or not header or not expected:
        raise ImproperlyConfigured(
            f"SECURE_PROXY_SSL_HEADER must look like 'X-Forwarded-Proto: https', not {value!r}"
        )
    if not header.upper().startswith("HTTP_"):
        header = "HTTP_" + header.upper().replace("-", "_")
    return header.upper(), expected


# Only set this behind a proxy that always sets (and strips incoming) the header.
# The RTMP ingest calls daphne over plain HTTP on loopback (broadcast/views.py): never redirected.
SECURE_REDIRECT_EXEMPT = [r"^broadcast/ingest/"]
SECURE_PROXY_SSL_HEADER = proxy_ssl_header(os.environ.get("SECURE_PROXY_SSL_HEADER", ""))
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
for _origin in CSRF_TRUSTED_ORIGINS:
    if "://" not in _origin:
        raise ImproperlyConfigured(
            f"CSRF_TRUSTED_ORIGINS entries need a scheme (https://example.com), not {_origin!r}"
        )

INSTALLED_APPS = [
    # First: livestream's hardened runworker and dashboard's runserver (daphne's, plus
    # the embedded Redis a fresh clone needs) replace Channels' and daphne's own.
    "livestream",
    "dashboard",
    "daphne",  # before staticfiles: its runserver serves ASGI
    "alerts",
    "platforms",
    "broadcast",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "allauth",
    "allauth.account",
    # Connecting Twitch / YouTube (issue 21, platforms/): allauth's own providers; a
    # connected account becomes a platforms.PlatformConnection (platforms/oauth.py).
    "allauth.socialaccount",
    "allauth.socialaccount.providers.twitch",
    "allauth.socialaccount.providers.google",
    "hijack",
    "hijack.contrib.admin",
]

# Database sessions that also drop the WebSocket handshake cache's entry when deleted
# (dashboard/auth/ws_auth.py).
SESSION_ENGINE = "dashboard.auth.session_store"

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
    "dashboard.auth.sessions.EndedSessionsMiddleware",
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

# Engines the app is tested with (SQLite locally, PostgreSQL in production).
SUPPORTED_DATABASES = {"django.db.backends.sqlite3", "django.db.backends.postgresql"}


def database(url: str | None) -> dj_database_url.DBConfig:
    """DATABASES["default"] from DATABASE_URL, or the SQLite file under var/ (created if missing)."""
    if url is None:
        # A fresh clone has no var/: create it, or migrate fails with "unable to open database file".
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    try:
        config = dj_database_url.parse(url, conn_max_age=0)
    except ValueError as exc:  # unknown scheme, bad port ...
        raise ImproperlyConfigured(f"DATABASE_URL is malformed or unsupported: {exc}") from None
    if config.get("ENGINE") not in SUPPORTED_DATABASES:
        raise ImproperlyConfigured(
            f"DATABASE_URL engine {config.get('ENGINE')!r} is not supported: use sqlite:///path or postgres://..."
        )
    if not config.get("NAME"):
        raise ImproperlyConfigured("DATABASE_URL names no database (sqlite:///path, postgres://host/name)")
    return config


DATABASES = {"default": database(os.environ.get("DATABASE_URL") or None)}
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

# Connected platforms (platforms/, docs/platforms.md): the OAuth apps come from the
# environment (TWITCH_CLIENT_ID / TWITCH_CLIENT_SECRET, GOOGLE_CLIENT_ID /
# GOOGLE_CLIENT_SECRET); a provider without them is not offered. The tokens allauth
# receives are moved, encrypted, into the PlatformConnection (platforms/oauth.py).
SOCIALACCOUNT_STORE_TOKENS = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False


def oauth_provider(id_var: str, secret_var: str, **options: object) -> dict[str, object]:
    client_id, secret = os.environ.get(id_var, ""), os.environ.get(secret_var, "")
    apps = [{"client_id": client_id, "secret": secret}] if client_id and secret else []
    return {"APPS": apps, **options}


SOCIALACCOUNT_PROVIDERS = {
    "twitch": oauth_provider(
        "TWITCH_CLIENT_ID",
        "TWITCH_CLIENT_SECRET",
        SCOPE=[
            "user:read:email",
            "chat:read",
            "chat:edit",
            "channel:read:stream_key",
            "channel:manage:broadcast",
        ],
    ),
    "google": oauth_provider(
        "GOOGLE_CLIENT_ID",
        "GOOGLE_CLIENT_SECRET",
        SCOPE=["profile", "email", "https://www.googleapis.com/auth/youtube"],
        AUTH_PARAMS={"access_type": "offline", "prompt": "consent"},  # a refresh token every time
    ),
}
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

# django-hijack: only superusers impersonate, and never another superuser
# (dashboard/auth/impersonation.py); the banner is dashboard/templates/hijack/notification.html.
HIJACK_PERMISSION_CHECK = "dashboard.auth.impersonation.superusers_impersonate_others"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

# Redis: the presence store, leases, timers, the channel layer and the cache
# share it. Any of redis://, rediss://, unix:// or
# redis+sentinel://host:port[,host:port]/<service>[/<db>] (streampai/redisconf.py).
# Unset means the embedded redis-server that `make run` (or `runserver`) starts
# under var/redis/.
REDIS_URL = os.environ.get("REDIS_URL") or f"unix://{VAR_DIR / 'redis' / 'redis.sock'}?db=0"

# The presence-driven stream manager. Every key, its type and its default is
# documented in livestream/conf.py; LIVESTREAM_<KEY> in the environment
# overrides it (strings are converted to the key's type there).
LIVESTREAM = {
    name.removeprefix("LIVESTREAM_"): value
    for name, value in os.environ.items()
    if name.startswith("LIVESTREAM_") and name != "LIVESTREAM_LOG_LEVEL"
}
# The RTMP ingest's port, as PORT is daphne's (LIVESTREAM_RTMP_PORT wins if both are set).
if os.environ.get("RTMP_PORT") and "RTMP_PORT" not in LIVESTREAM:
    LIVESTREAM["RTMP_PORT"] = os.environ["RTMP_PORT"]
# Cloudflare Stream (BROADCAST_BACKEND "cloudflare", docs/cloudflare.md) under the names
# Cloudflare's own tools use; LIVESTREAM_CLOUDFLARE_* wins if both are set.
for _name in (
    "CLOUDFLARE_ACCOUNT_ID",
    "CLOUDFLARE_API_TOKEN",
    "CLOUDFLARE_API_BASE_URL",
    "CLOUDFLARE_WEBHOOK_SECRET",
):
    if os.environ.get(_name) and _name not in LIVESTREAM:
        LIVESTREAM[_name] = os.environ[_name]
# Secrets at rest (streampai/secrets.py): a Fernet key or passphrase; derived from
# SECRET_KEY when unset. Changing it makes stored stream keys unreadable.
SECRETS_KEY = os.environ.get("STREAMPAI_SECRETS_KEY", "")
# Several deployments (or test runs) can share one Redis under different prefixes.
_prefix = LIVESTREAM.get("KEY_PREFIX", "streampai")
CHANNEL_LAYERS = channel_layers(REDIS_URL, prefix=f"{_prefix}:asgi")
# On the same Redis, so allauth's rate limits (and anything else cached) are
# shared by every process and survive restarts.
CACHES = caches(REDIS_URL, key_prefix=f"{_prefix}:cache")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Secrets (webhook secrets in paths, stream keys, tokens) are masked in every line
    # (streampai/logredact.py); daphne's access log is redacted by streampai/asgi.py.
    "filters": {"redact": {"()": "streampai.logredact.RedactFilter"}},
    "formatters": {
        "plain": {
            "()": "streampai.logredact.RedactingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]},
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "livestream": {"level": os.environ.get("LIVESTREAM_LOG_LEVEL", "INFO")},
        "dashboard": {"level": "INFO"},
        "alerts": {"level": "INFO"},
        "broadcast": {"level": "INFO"},
        "django.channels": {"level": "INFO"},
        "daphne": {"level": "INFO"},
        # Django's default config gives these loggers handlers of their own (a plain console
        # in DEBUG, runserver's access lines): every django.request warning was printed twice,
        # and those copies bypassed the redaction. Everything goes through the root handler.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
