"""A PlatformConnection saved or deleted: the user's running PlatformSupervisor follows at once.

The supervisor runs only for users who have a connection: the first connection adds a
UserComponent row that enables it (livestream/components/choices.py), removing the last
one deletes that row. Either way the worker is told through choices.notify, after commit,
naming the component so a running supervisor re-reads its connections.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from livestream.components import choices
from livestream.models import UserComponent
from platforms.models import PlatformConnection

NAME = SUPERVISOR = "PlatformSupervisor"  # its registry name (livestream/components/registry.py)


@receiver(post_save, sender=PlatformConnection)
def connection_saved(sender: type[PlatformConnection], instance: PlatformConnection, **kwargs: Any) -> None:
    UserComponent.objects.get_or_create(user_id=instance.user_id, name=SUPERVISOR, defaults={"enabled": True})
    user_id = str(instance.user_id)
    transaction.on_commit(lambda: choices.notify(user_id, NAME))


@receiver(post_delete, sender=PlatformConnection)
def connection_deleted(sender: type[PlatformConnection], instance: PlatformConnection, **kwargs: Any) -> None:
    user_id = str(instance.user_id)
    if not PlatformConnection.objects.filter(user_id=instance.user_id).exists():
        UserComponent.objects.filter(user_id=instance.user_id, name=SUPERVISOR).delete()
    transaction.on_commit(lambda: choices.notify(user_id, NAME))
