"""python manage.py connect_platform <email> twitch --channel <login> --token <oauth token>
                                    <email> youtube --channel <id> --token <t> [--refresh-token R]
                                    <email> custom --url U --key K [--name N]

Sets a connection up from the command line (operators, tests): updates the user's
connection of that platform and channel (or URL) when there is one, else creates it,
enabled. Prints the connection's id, never the token or key.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from platforms.models import PlatformConnection


class Command(BaseCommand):
    help = "Connect a user's Twitch / YouTube account or a custom RTMP target."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("email")
        parser.add_argument("platform", choices=[p for p, _ in PlatformConnection.PLATFORMS])
        parser.add_argument("--channel", default="", help="Twitch login / YouTube channel id")
        parser.add_argument("--token", default="", help="OAuth access token (without 'oauth:')")
        parser.add_argument("--refresh-token", default="")
        parser.add_argument(
            "--expires-in", type=float, default=0, help="seconds the token is valid (0: unknown)"
        )
        parser.add_argument("--url", default="", help="custom: RTMP server URL")
        parser.add_argument("--key", default="", help="custom: stream key")
        parser.add_argument("--name", default="")
        parser.add_argument("--disabled", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        platform = options["platform"]
        user = get_user_model().objects.filter(email__iexact=options["email"]).first()
        if user is None:
            raise CommandError(f"no user with email {options['email']!r}")
        if platform == PlatformConnection.CUSTOM:
            if not options["url"] or not options["key"]:
                raise CommandError("custom needs --url and --key")
            if "://" not in options["url"]:
                raise CommandError("--url must be an rtmp:// or rtmps:// URL")
            lookup = {"url": options["url"]}
        else:
            if not options["channel"] or not options["token"]:
                raise CommandError(f"{platform} needs --channel and --token")
            lookup = {
                "channel": options["channel"].lstrip("#").lower()
                if platform == "twitch"
                else options["channel"]
            }
        connection = PlatformConnection.objects.filter(user=user, platform=platform, **lookup).first()
        if connection is None:
            connection = PlatformConnection(user=user, platform=platform, **lookup)
        token = options["token"].removeprefix("oauth:")
        if token:
            connection.access_token = token
        if options["refresh_token"]:
            connection.refresh_token = options["refresh_token"]
        if options["expires_in"]:
            connection.expires_at = timezone.now() + timedelta(seconds=options["expires_in"])
        if options["key"]:
            connection.key = options["key"]
        if options["name"]:
            connection.name = options["name"]
        connection.enabled = not options["disabled"]
        connection.revoked = ""
        connection.save()
        self.stdout.write(f"{connection.public_id}\n")
