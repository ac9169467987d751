"""django-channels-more-than-present doing the dashboard's connects and disconnects.

Runs in the peer's OWN virtualenv (see benchmarks/peer_venv.py), so it imports
nothing of Streampai: stdlib, Django, Channels, channels-redis and
``channels_presence`` only. Prints one JSON object.

Driven as its documentation says a consumer uses it:

    connect:    Room.objects.add("dashboard", self.channel_name, self.scope["user"])
    disconnect: Room.objects.remove("dashboard", self.channel_name)

Its API is synchronous (ORM + async_to_sync(group_add)), so each call runs the
way a Channels sync consumer runs its handlers: in database_sync_to_async's
thread, with the channel layer on the main event loop. With ``--broadcast`` a
``presence_changed`` receiver group_sends the change to the room, as the
documentation's example receiver does.

    python peer_presence.py --redis-url URL --db PATH --users N [--broadcast] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time


def configure(redis_url: str, db_path: str) -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "channels",
            "channels_presence",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": db_path}},
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": redis_url, "socket_timeout": 15}],
                    "prefix": "peer:asgi",
                },
            }
        },
        SECRET_KEY=secrets.token_urlsafe(40),
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def add_broadcast_receiver() -> None:
    """The documentation's example: tell the room who came and went."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer
    from channels_presence.signals import presence_changed

    layer = get_channel_layer()

    def broadcast(sender, room, added=None, removed=None, bulk_change=False, **kwargs):
        message = {"type": "presence.changed"}
        if added:
            message["added"] = added.channel_name
        if removed:
            message["removed"] = removed.channel_name
        async_to_sync(layer.group_send)(room.channel_name, message)

    presence_changed.connect(broadcast, weak=False)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def drive(users: int, concurrency: int) -> dict:
    from channels.db import database_sync_to_async
    from channels_presence.models import Presence, Room
    from django.contrib.auth import get_user_model
    from django.db import connection

    user_model = get_user_model()
    names = [f"peer{i}" for i in range(users)]
    await database_sync_to_async(
        lambda: user_model.objects.bulk_create([user_model(username=n, password="!") for n in names])
    )()
    people = await database_sync_to_async(lambda: list(user_model.objects.filter(username__in=names)))()
    channels = [f"specific.{secrets.token_hex(6)}!{secrets.token_hex(6)}" for _ in people]
    queries = 0

    def counted(call):
        def run():
            nonlocal queries

            def count(execute, sql, params, many, context):
                nonlocal queries
                queries += 1
                return execute(sql, params, many, context)

            with connection.execute_wrapper(count):
                call()

        return database_sync_to_async(run)

    def connect(i):
        return counted(lambda: Room.objects.add("dashboard", channels[i], people[i]))

    def disconnect(i):
        return counted(lambda: Room.objects.remove("dashboard", channels[i]))

    # Warm up (migrations done, room created, layer connected), then forget it.
    await connect(0)()
    await disconnect(0)()
    queries = 0

    async def phase(make) -> tuple[list[float], float]:
        latencies: list[float] = []
        gate = asyncio.Semaphore(concurrency)

        async def one(i):
            async with gate:
                t = time.perf_counter()
                await make(i)()
                latencies.append(time.perf_counter() - t)

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(len(people))))
        return latencies, time.perf_counter() - start

    connect_lat, connect_wall = await phase(connect)
    connect_queries, queries = queries, 0
    present = await database_sync_to_async(lambda: Presence.objects.count())()
    disconnect_lat, disconnect_wall = await phase(disconnect)
    disconnect_queries = queries
    left = await database_sync_to_async(lambda: Presence.objects.count())()
    n = len(people)

    def stats(latencies: list[float], wall: float) -> dict:
        return {
            "ops_per_s": n / wall,
            "us_mean": 1e6 * sum(latencies) / n,
            "us_p50": 1e6 * percentile(latencies, 50),
            "us_p99": 1e6 * percentile(latencies, 99),
        }

    return {
        "users": n,
        "concurrency": concurrency,
        "present_after_connects": present,
        "present_after_disconnects": left,
        "connect": {**stats(connect_lat, connect_wall), "sql_per_op": connect_queries / n},
        "disconnect": {**stats(disconnect_lat, disconnect_wall), "sql_per_op": disconnect_queries / n},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--broadcast", action="store_true")
    args = parser.parse_args()
    configure(args.redis_url, args.db)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if args.broadcast:
        add_broadcast_receiver()
    result = asyncio.run(drive(args.users, args.concurrency))
    from importlib.metadata import version

    import channels_presence

    result["versions"] = {
        name: version(name)
        for name in ("django-channels-more-than-present", "Django", "channels", "channels-redis", "redis")
    }
    result["module"] = channels_presence.__file__
    print(json.dumps(result))


if __name__ == "__main__":
    main()
