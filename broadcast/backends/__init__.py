"""The broadcast backend chosen by LIVESTREAM["BROADCAST_BACKEND"], by name: "selfhosted"
(default) or "cloudflare". A new backend is one line in BACKENDS (livestream/conf.py checks
the name at start)."""

from __future__ import annotations

from functools import lru_cache

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from broadcast.backends.base import BroadcastBackend

BACKENDS = {
    "selfhosted": "broadcast.backends.selfhosted.SelfHostedBackend",
    "cloudflare": "broadcast.backends.cloudflare.CloudflareBackend",
}


@lru_cache(maxsize=1)
def _load(name: str) -> BroadcastBackend:
    path = BACKENDS.get(name)
    if path is None:
        raise ImproperlyConfigured(f"BROADCAST_BACKEND {name!r} is not one of {', '.join(BACKENDS)}")
    cls = import_string(path)  # a path written here, in code
    return cls()


def get_backend() -> BroadcastBackend:
    """This process' backend instance (one per setting value)."""
    from livestream.conf import get_settings

    return _load(get_settings().BROADCAST_BACKEND)


@receiver(setting_changed)
def _reset(**_: object) -> None:
    _load.cache_clear()
