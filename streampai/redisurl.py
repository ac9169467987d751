"""REDIS_URL, parsed and checked: which Redis (or which Sentinel service) every client talks to.

Accepted forms:

* ``redis://``, ``rediss://`` and ``unix://`` (redis-py's own URL forms), and
* ``redis+sentinel://[:password@]host:port[,host:port...]/<service>[/<db>][?options]``
  (and ``rediss+sentinel://`` for TLS to the master), the redis-sentinel-url
  convention. Options: ``db``, ``client_type`` (master only), ``socket_timeout``,
  ``socket_connect_timeout``, ``password``, ``username``, and the same with a
  ``sentinel_`` prefix for the sentinels themselves.

A malformed or unsupported URL raises ImproperlyConfigured with one clear line
when settings load, so daphne and the worker stop at start instead of retrying
for ever. Clients and pools are built from a RedisTarget in streampai/redisconf.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis.asyncio as aioredis
from django.core.exceptions import ImproperlyConfigured

DEFAULT_SENTINEL_PORT = 26379

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DIRECT_SCHEMES = ("redis", "rediss", "unix")

# redis-sentinel-url query options we honour. Numbers are seconds.
_FLOAT_OPTIONS = ("socket_timeout", "socket_connect_timeout")
_SENTINEL_PREFIX = "sentinel_"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed REDIS_URL.

    ``url`` is the redis-py URL for the direct forms; for Sentinel, ``sentinels``,
    ``service`` and the kwargs say how to find and talk to the master.
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""
    # Connection kwargs for the master (db, password, ssl, socket timeouts ...).
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    # Connection kwargs for the sentinels themselves (sentinel_* options).
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)


def redacted(url: str) -> str:
    """``url`` without its password, for error messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    creds, hosts = parts.netloc.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    return parts._replace(netloc=f"{user}:***@{hosts}").geturl()


def parse_redis_url(url: str | None) -> RedisTarget:
    """Validate and parse a REDIS_URL; ImproperlyConfigured (one line) if it is unusable."""
    if not url or not isinstance(url, str) or not url.strip():
        raise ImproperlyConfigured("REDIS_URL is empty")
    url = url.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        return _parse_sentinel_url(url)
    if scheme not in DIRECT_SCHEMES:
        raise ImproperlyConfigured(
            f"REDIS_URL {redacted(url)!r}: unsupported scheme; use redis://, rediss://, unix:// "
            "or redis+sentinel://host:port[,host:port]/<service>[/<db>]"
        )
    try:
        kwargs = aioredis.connection.parse_url(url)
    except ValueError as exc:
        raise ImproperlyConfigured(f"REDIS_URL {redacted(url)!r}: {exc}") from None
    if scheme == "unix" and not kwargs.get("path"):
        raise ImproperlyConfigured(f"REDIS_URL {redacted(url)!r}: a unix:// URL needs a socket path")
    if scheme != "unix" and not kwargs.get("host"):
        raise ImproperlyConfigured(f"REDIS_URL {redacted(url)!r}: no host")
    db = kwargs.get("db", 0)
    if not isinstance(db, int) or db < 0:
        raise ImproperlyConfigured(f"REDIS_URL {redacted(url)!r}: db must be a number >= 0")
    return RedisTarget(url=url)


def _parse_sentinel_url(url: str) -> RedisTarget:
    """The redis-sentinel-url form: password for the Redis servers, ``sentinel_*`` options for the sentinels."""

    def bad(why: str) -> ImproperlyConfigured:
        return ImproperlyConfigured(f"REDIS_URL {redacted(url)!r}: {why}")

    parts = urlsplit(url)
    creds, _, hostspec = parts.netloc.rpartition("@")
    client: dict[str, Any] = {}
    sentinel: dict[str, Any] = {}
    if creds:
        username, _, password = creds.partition(":") if ":" in creds else ("", "", creds)
        if password:
            client["password"] = unquote(password)
        if username:
            client["username"] = unquote(username)
    sentinels: list[tuple[str, int]] = []
    for entry in hostspec.split(","):
        host, _, port = entry.strip().rpartition(":") if ":" in entry else (entry.strip(), "", "")
        if not host:
            raise bad(f"empty sentinel host in {hostspec!r}")
        try:
            port_number = int(port) if port else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise bad(f"sentinel port {port!r} is not a number") from None
        if not 0 < port_number < 65536:
            raise bad(f"sentinel port {port_number} out of range")
        sentinels.append((host.strip("[]"), port_number))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path:
        raise bad("no service name: redis+sentinel://host:port/<service>[/<db>]")
    if len(path) > 2:
        raise bad("the path is /<service>[/<db>]")
    service = path[0]
    client["db"] = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise bad(f"db {path[1]!r} is not a number")
        client["db"] = int(path[1])
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        target, option = (
            (sentinel, name[len(_SENTINEL_PREFIX) :]) if name.startswith(_SENTINEL_PREFIX) else (client, name)
        )
        if name == "client_type":
            # redis-sentinel-url can hand out a replica client; everything here writes.
            if value != "master":
                raise bad("client_type must be master (the app writes to Redis)")
        elif name == "db":
            if not value.isdigit():
                raise bad(f"db {value!r} is not a number")
            client["db"] = int(value)
        elif option in _FLOAT_OPTIONS:
            try:
                target[option] = float(value)
            except ValueError:
                raise bad(f"{name}={value!r} is not a number of seconds") from None
        elif option in ("password", "username"):
            target[option] = value
        else:
            raise bad(
                f"unknown option {name!r} (known: db, client_type, socket_timeout, socket_connect_timeout, "
                "password, sentinel_password, sentinel_username, sentinel_socket_timeout, "
                "sentinel_socket_connect_timeout)"
            )
    if parts.scheme.lower() == "rediss+sentinel":
        client["ssl"] = True
    return RedisTarget(
        url=url, sentinels=tuple(sentinels), service=service, client_kwargs=client, sentinel_kwargs=sentinel
    )
