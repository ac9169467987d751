"""A UserComponent row saved or deleted: the user's running manager follows, after commit."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from livestream.components import choices
from livestream.models import UserComponent


@receiver(post_save, sender=UserComponent)
@receiver(post_delete, sender=UserComponent)
def component_choice_changed(sender: type[UserComponent], instance: UserComponent, **kwargs: Any) -> None:
    user_id = str(instance.user_id)
    transaction.on_commit(lambda: choices.notify(user_id))
