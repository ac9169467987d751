"""Create the local demo accounts that `make run` prints (DEBUG only)."""

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

DEMO_USERS = [
    # email, password, superuser
    ("demo@streampai.local", "streampai-demo", False),
    ("admin@streampai.local", "streampai-admin", True),
]


class Command(BaseCommand):
    help = "Create demo@streampai.local and admin@streampai.local for local use."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("Refusing to create demo accounts with DEBUG off.")
        User = get_user_model()
        for email, password, superuser in DEMO_USERS:
            user = User.objects.filter(email=email).first()
            if user is None:
                user = User(
                    username=email.split("@")[0], email=email, is_staff=superuser, is_superuser=superuser
                )
                user.set_password(password)
                user.save()
                self.stdout.write(f"created {email}")
            EmailAddress.objects.get_or_create(
                user=user, email=email, defaults={"verified": True, "primary": True}
            )
