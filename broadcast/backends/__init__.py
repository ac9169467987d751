"""The broadcast backend chosen by LIVESTREAM["BROADCAST_BACKEND"]: "selfhosted" (default),
"cloudflare", or a dotted path to a BroadcastBackend subclass."""

from __future__ import annotations

from functools import lru_cache

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from broadcast.backends.base import BroadcastBackend

ALIASES = {
    "selfhosted": "broadcast.backends.selfhosted.SelfHostedBackend",
    "cloudflare": "broadcast.backends.cloudflare.CloudflareBackend",
}


@lru_cache(maxsize=1)
def _load(name: str) -> BroadcastBackend:
    cls = import_string(ALIASES.get(name, name))
    return cls()


def get_backend() -> BroadcastBackend:
    """This process' backend instance (one per setting value)."""
    from livestream.conf import get_settings

    return _load(get_settings().BROADCAST_BACKEND)


@receiver(setting_changed)
def _reset(**_: object) -> None:
    _load.cache_clear()
