"""streampai.secrets: round trip, per-call randomness, key sources, masking, wrong key."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from streampai import secrets


def test_round_trip_and_fresh_ciphertext_each_time() -> None:
    token = secrets.encrypt("live_sk_0123456789abcdef")
    assert "0123456789" not in token
    assert secrets.decrypt(token) == "live_sk_0123456789abcdef"
    assert secrets.encrypt("x") != secrets.encrypt("x")
    assert secrets.decrypt(secrets.encrypt("")) == ""
    assert secrets.decrypt(secrets.encrypt("ключ ✓")) == "ключ ✓"


def test_other_key_cannot_decrypt(settings) -> None:
    token = secrets.encrypt("abc")
    settings.SECRETS_KEY = Fernet.generate_key().decode()
    with pytest.raises(secrets.SecretError):
        secrets.decrypt(token)
    assert secrets.decrypt(secrets.encrypt("abc")) == "abc"


def test_key_sources(settings, monkeypatch) -> None:
    settings.SECRETS_KEY = ""
    monkeypatch.setenv("STREAMPAI_SECRETS_KEY", "a passphrase, not a fernet key")
    token = secrets.encrypt("abc")
    monkeypatch.delenv("STREAMPAI_SECRETS_KEY")
    settings.SECRET_KEY = settings.SECRET_KEY + "-other"  # derived key changes; env key is gone
    with pytest.raises(secrets.SecretError):
        secrets.decrypt(token)
    monkeypatch.setenv("STREAMPAI_SECRETS_KEY", "a passphrase, not a fernet key")
    assert secrets.decrypt(token) == "abc"


def test_garbage_is_a_clear_error() -> None:
    for bad in ("", "not a token", "gAAAAA" + "x" * 40, "ü"):
        with pytest.raises(secrets.SecretError):
            secrets.decrypt(bad)


def test_mask_shows_at_most_the_last_four() -> None:
    assert secrets.mask("") == ""
    assert secrets.mask("short") == "••••"
    assert secrets.mask("12345678") == "••••"
    assert secrets.mask("live_abcdefgh1234") == "••••1234"
    assert "abcdefgh" not in secrets.mask("live_abcdefgh1234")
