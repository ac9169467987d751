"""Secrets at rest: ``encrypt``/``decrypt`` for values stored in the database, ``mask`` for logs and pages.

Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) with a key taken from, in order:
``settings.SECRETS_KEY``, the environment variable ``STREAMPAI_SECRETS_KEY``, or derived from
``settings.SECRET_KEY`` (SHA-256 of a fixed label + the key) when neither is set. A Fernet key
is 32 url-safe base64 bytes; any other string given is hashed into one, so a person may set a
passphrase. Rotating the key makes old ciphertexts unreadable: ``decrypt`` then raises
``SecretError`` (callers treat that as "no key stored", never as a crash).

A secret is never logged: log an id or ``mask(secret)``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = ["SecretError", "decrypt", "encrypt", "mask"]


class SecretError(ValueError):
    """A stored secret could not be decrypted (wrong key, or not a ciphertext)."""


def _key_material() -> str:
    configured = getattr(settings, "SECRETS_KEY", "") or os.environ.get("STREAMPAI_SECRETS_KEY", "")
    if configured:
        return str(configured)
    # Derived, labelled so the Fernet key is not SECRET_KEY itself (nor another derivation of it).
    return "derived-from-SECRET_KEY:" + str(settings.SECRET_KEY)


def _as_fernet_key(material: str) -> bytes:
    raw = material.encode()
    try:
        if len(base64.urlsafe_b64decode(raw)) == 32:
            return raw  # already a Fernet key (Fernet.generate_key())
    except (ValueError, TypeError):
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(b"streampai.secrets:" + raw).digest())


@lru_cache(maxsize=4)
def _fernet(material: str) -> Fernet:
    return Fernet(_as_fernet_key(material))


@receiver(setting_changed)
def _reset(**_: object) -> None:
    _fernet.cache_clear()


def encrypt(value: str) -> str:
    """The ciphertext of ``value`` (ASCII, safe for a text column); each call differs (random IV)."""
    return _fernet(_key_material()).encrypt(value.encode()).decode("ascii")


def decrypt(token: str) -> str:
    """The plaintext of ``encrypt``'s output; ``SecretError`` if it is not one made with this key."""
    try:
        return _fernet(_key_material()).decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError, ValueError) as exc:
        raise SecretError("stored secret cannot be decrypted (wrong SECRETS_KEY?)") from exc


def mask(value: str) -> str:
    """A form safe for logs and pages: the last 4 characters at most, and only of a long value.

    ``mask("live_abcdefgh1234")`` -> ``"••••1234"``; values of 8 characters or fewer show nothing.
    """
    if not value:
        return ""
    if len(value) <= 8:
        return "••••"
    return "••••" + value[-4:]
