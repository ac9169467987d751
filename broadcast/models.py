"""What a user streams from (their ingest) and to (their outputs). Keys are secrets: stored
encrypted (streampai.secrets), never shown in full again, never logged."""

from __future__ import annotations

import hashlib
import secrets as pysecrets

from django.conf import settings
from django.db import models

from streampai import secrets


def key_hash(key: str) -> str:
    """How an ingest key is looked up (the ingest callback gets a key, never a user): SHA-256 hex.
    Keys are 32 random url-safe bytes, so an unsalted hash is safe to index."""
    return hashlib.sha256(key.encode()).hexdigest()


def account_pk(user_id: str) -> int | None:
    """The auth user's primary key that ``user_id`` names, or None when it cannot name one
    (presence ids are strings: a load generator's "w17" has no rows, and is no error)."""
    return int(user_id) if user_id.isdigit() and len(user_id) < 19 else None


def new_stream_key() -> str:
    """A fresh ingest key: 32 random bytes, url-safe (RTMP stream names allow [A-Za-z0-9_-])."""
    return "sp_" + pysecrets.token_urlsafe(32)


class StreamIngest(models.Model):
    """One user's ingest for one backend: the server URL and key OBS publishes to.

    ``remote_id`` is the backend's own id for it (Cloudflare's live input uid; empty for
    the self-hosted ingest) and ``server_url`` what the backend gave (empty: the
    backend computes it, e.g. from RTMP_PORT)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="stream_ingests"
    )
    backend = models.CharField(max_length=32, default="selfhosted")
    key_hash = models.CharField(max_length=64, unique=True)
    key_encrypted = models.TextField()
    remote_id = models.CharField(max_length=128, blank=True, default="")
    server_url = models.CharField(max_length=512, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "backend"], name="broadcast_one_ingest_per_backend")
        ]

    def __str__(self) -> str:
        return f"ingest of user {self.user_id} ({self.backend})"

    @property
    def key(self) -> str:
        return secrets.decrypt(self.key_encrypted)

    def set_key(self, key: str) -> None:
        self.key_encrypted = secrets.encrypt(key)
        self.key_hash = key_hash(key)


class StreamOutput(models.Model):
    """A destination the user's stream is sent on to (an RTMP/RTMPS URL + stream key)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="stream_outputs"
    )
    name = models.CharField(max_length=100)
    url = models.CharField(max_length=1000)
    key_encrypted = models.TextField(blank=True, default="")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"output {self.pk} of user {self.user_id}: {self.name}"

    @property
    def key(self) -> str:
        return secrets.decrypt(self.key_encrypted) if self.key_encrypted else ""

    def set_key(self, key: str) -> None:
        self.key_encrypted = secrets.encrypt(key) if key else ""
